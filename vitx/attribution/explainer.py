"""The Explainer base: a method is its options, what it needs, and the math, nothing else.

Everything around the math (finding attention and token states, hooks, the forward and
backward pass, targets, token layout, batching, restoring the model) belongs to the core.
A subclass declares `name`, `options` and `requires` (what the core must record), and
implements the math in one of two ways:

- attention methods: `attribute(attentions, query, gradients)`, as the four original
  methods do (`requires` defaults to attention, plus its gradient when `needs_grad`);
- anything else: `explain(evidence) -> (B, N)` relevance per token, reading the fields of
  `Evidence` it asked for (token states and their gradients, or `evidence.score` /
  `evidence.input_gradient` for methods that run the model themselves).
"""
from typing import Any, ClassVar, FrozenSet, List, Optional, Sequence, Tuple

import torch

from ..capture.requirements import (  # noqa: F401 (the names plugins import from here)
    ATTENTION, ATTENTION_GRAD, BLOCK_STATES, MODEL, REQUIREMENTS, TOKEN_GRAD, TOKENS,
)
from ..errors import VitxError, suggest
from .options import Option, canonical_options  # noqa: F401 (plugins import Option from here)


class Explainer:
    """Base class of every explanation method (built-in or plugin).

    `attribute` receives per-layer attention (B, heads, N, N), or whatever `keep` reduced
    it to, the explained token as a (N,) weight vector `query`, and, when `needs_grad`,
    d(target logit)/d(attention) per layer. It returns (B, N): one relevance per token.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    needs_grad: ClassVar[bool] = False
    requires: ClassVar[Tuple[str, ...]] = ()
    # True: `attribute` also handles the stage layers of hierarchical models (vitx.capture.stages:
    # compact window or pooled attention chained by stage merges, through vitx.attribution.ops);
    # attention methods without it are refused on those models before any forward
    windows: ClassVar[bool] = False
    # True: the method reads the token embeddings where the blocks start as the model's one
    # token set (libragrad's FullGrad on tokens), so it is refused before any forward on
    # hierarchical models whose token grid changes between stages
    one_token_set: ClassVar[bool] = False
    # True: the method runs the model forward only (perturbation: occlusion, RISE, Shapley);
    # False with MODEL in `requires`: it differentiates the model itself (IG, LRP, LibraGrad)
    forward_only: ClassVar[bool] = False
    # the gradient mode the forward runs in ('plain', or 'libragrad': vitx.attribution.libragrad);
    # a method that offers the modes declares GRAD_MODE_OPTION, whose value sets it per instance
    grad_mode: str = "plain"
    options: ClassVar[Sequence[Option]] = ()

    @classmethod
    def requirements(cls) -> FrozenSet[str]:
        """What the core records for this method (`requires`, or attention [+ its gradient])."""
        if cls.requires:
            unknown = set(cls.requires) - set(REQUIREMENTS)
            if unknown:
                raise VitxError(f"method {cls.name!r} requires unknown evidence {sorted(unknown)}; known: {REQUIREMENTS}")
            return frozenset(cls.requires)
        return frozenset({ATTENTION, ATTENTION_GRAD} if cls.needs_grad else {ATTENTION})

    @classmethod
    def uses_gradients(cls) -> bool:
        """Whether the core's recorded forward needs a backward (attention or token gradients)."""
        return bool(cls.requirements() & {ATTENTION_GRAD, TOKEN_GRAD})

    @classmethod
    def needs_gradients(cls) -> bool:
        """Whether the method needs autograd at all: the core's backward, or its own (a method
        that runs the model itself and is not `forward_only`)."""
        return cls.uses_gradients() or (MODEL in cls.requirements() and not cls.forward_only)

    def __init__(self, **options: Any):
        options = canonical_options(self.options, options, self.name)
        known = {o.name: o for o in self.options}
        unknown = [k for k in options if k not in known]
        if unknown:
            names = ", ".join(known) or "none"
            raise VitxError(
                f"method {self.name!r} has no option {unknown[0]!r}.{suggest(unknown[0], known)} Its options: {names}"
            )
        for option in self.options:
            setattr(self, option.name, option.parse(options.get(option.name), self.name))

    @property
    def settings(self) -> dict:
        return {o.name: getattr(self, o.name) for o in self.options}

    def gradient_rules(self, model):
        """The context the explained forward (and `Evidence.score` / `input_gradient`) runs in:
        the method's `grad_mode` (plain gradients: nothing changes; LibraGrad's rules)."""
        from .libragrad import gradient_rules

        return gradient_rules(self.grad_mode, model)

    @property
    def plain_gradients(self) -> bool:
        return self.grad_mode == "plain"

    def fused_heads(self) -> Optional[str]:
        """'mean', 'max' or 'min' when the method, without gradients, reads each layer's
        attention only fused over its heads by that reduction (rollout). The core then records
        the fused (B, 1, N, N) straight from q and k a chunk at a time, beside the model's fused
        attention kernel, so the per-head probabilities of a layer never exist all at once.
        None (the default): the method sees every head."""
        return None

    def keep(self, layer: int, attention: torch.Tensor) -> Optional[torch.Tensor]:
        """What to store of one layer's attention when no gradient is needed.

        Override to record less (fuse heads, skip layers: return None).
        """
        return attention

    def reduce(self, layer: int, attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """Optional, for gradient methods that need only a head-fused N x N map per layer.

        attention, gradient: float32 (B, h, N, N) for some of a layer's heads (the core may
        pass one image and one head at a time); return the SUM over these heads of the
        method's per-head term, (B, N, N). The core calls it during the backward pass as soon
        as the layer's gradient exists, adds up the head groups, divides by the number of
        heads and keeps only that mean, in the model's dtype. `attribute` then receives those
        per-layer means as `attentions`, with `gradients=None`. Not overriding it keeps the
        full per-head attention and gradients (memory grows with heads x layers x N^2).
        On a stage layer (`windows` methods, vitx.capture.stages) it receives the blocks,
        (B, h, windows, n, n) or (B, h, Nq, Nk): heads stay on dim 1, so an elementwise term
        summed over dim 1 serves all.
        """
        raise NotImplementedError

    def fold(self, layer: int, attention: torch.Tensor, running: Optional[torch.Tensor],
             query: torch.Tensor) -> Optional[torch.Tensor]:
        """Optional, for methods without gradients whose map is the explained token's row of a
        product of per-layer factors (rollout): fold each layer into a running (B, N, N) state
        in forward order as it is computed, so one state lives instead of one map per layer.

        Called with each layer's attention (B, h, N, N) in forward order and `running` (None
        for the first); return the new state, or None to keep the layer the usual way (`keep`)
        instead. The state reaches `explain` as `evidence.folded`.
        """
        raise NotImplementedError

    @classmethod
    def folds(cls) -> bool:
        """Whether the method folds the layers in the forward pass (overrides `fold`)."""
        return cls.fold is not Explainer.fold

    @classmethod
    def reduces(cls) -> bool:
        """Whether the method reduces each layer in the backward pass (overrides `reduce`)."""
        return cls.reduce is not Explainer.reduce

    def attribute(
        self,
        attentions: List[Optional[torch.Tensor]],
        query: torch.Tensor,
        gradients: Optional[List[torch.Tensor]] = None,
    ) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} implements neither attribute() nor explain()")

    def explain(self, evidence) -> torch.Tensor:
        """(B, N) relevance per token from the recorded `evidence` (vitx.attribution.evidence)."""
        return self.attribute(evidence.attentions, evidence.query, evidence.attention_grads)
