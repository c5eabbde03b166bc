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
from dataclasses import dataclass
from typing import Any, ClassVar, FrozenSet, List, Optional, Sequence, Tuple

import torch

from ..errors import VitxError, suggest


@dataclass(frozen=True)
class Option:
    """One option of an explainer, declared once and used by the library, CLI and docs."""

    name: str
    type: type
    default: Any
    help: str
    choices: Optional[Tuple[Any, ...]] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None

    def parse(self, value: Any, method: str) -> Any:
        if value is None:
            return None if self.default is None else self.parse(self.default, method)
        try:
            value = self.type(value)
        except (TypeError, ValueError):
            raise VitxError(f"{method}: option {self.name} expects {self.type.__name__}, got {value!r}") from None
        if isinstance(value, float) and value != value:  # NaN passes every range check
            raise VitxError(f"{method}: option {self.name} must be a number, got nan")
        if self.choices is not None and value not in self.choices:
            raise VitxError(
                f"{method}: option {self.name} must be one of {', '.join(map(str, self.choices))}, got {value!r}"
            )
        too_low = self.minimum is not None and value < self.minimum
        too_high = self.maximum is not None and value > self.maximum
        if too_low or too_high:
            raise VitxError(f"{method}: option {self.name} must be in [{self.minimum}, {self.maximum}], got {value}")
        return value


# What an explainer can ask the core to record (Explainer.requires).
ATTENTION = "attention"  # post-softmax attention per layer (B, heads, N, N)
ATTENTION_GRAD = "attention_grad"  # d(target score)/d(attention) per layer
TOKENS = "tokens"  # token states after each block (B, N, D)
TOKEN_GRAD = "token_grad"  # d(target score)/d(token states) per block
MODEL = "model"  # nothing recorded: the method runs the model itself (evidence.score / input_gradient)
REQUIREMENTS = (ATTENTION, ATTENTION_GRAD, TOKENS, TOKEN_GRAD, MODEL)


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
        return bool(cls.requirements() & {ATTENTION_GRAD, TOKEN_GRAD})

    def __init__(self, **options: Any):
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
