"""What one explained forward records, decided once from the method's declarations.

`RecordingPlan.of(explainer)` is a pure function of what the method declares (`requires`,
its capabilities `fused_heads` / `folds` / `reduces`, its gradient mode, `one_token_set`): it
runs no model, so each rule is unit-tested alone (tests/test_plan.py), and `explain` reads
the plan instead of re-deriving it inside the forward. The rules, in words:

- a backward pass runs when the method reads attention or token gradients, or when it
  differentiates the recorded tensors itself (`MODEL` beside attention or tokens: LeGrad),
  whose graph is then kept live;
- without gradients, attention is stored as the method `keep`s it, or folded into one running
  product in forward order (`fold`, rollout), or fused over heads while it is computed
  (`fused_heads`); a method that reads no attention stores none;
- with plain gradients, a method that `reduce`s gets each layer's (B, N, N) term in the
  backward pass instead of every head's attention and gradient (not under a gradient mode:
  the fused backward is the plain softmax's, and not when the graph is kept live);
- token states are recorded when read, and when no attention is (the layout comes from them).
"""
from dataclasses import dataclass
from typing import FrozenSet, Optional

from ..capture.requirements import ATTENTION, ATTENTION_GRAD, BLOCK_STATES, MODEL, TOKEN_GRAD, TOKENS


@dataclass(frozen=True)
class RecordingPlan:
    needs: FrozenSet[str]  # the method's requirements
    attention: bool  # record each layer's attention
    tokens: bool  # record token states
    states: bool  # record each block's input, stream after attention and output
    gradients: bool  # run a backward pass of the target score
    live: bool  # the method differentiates recorded tensors itself: keep their graph
    keep: bool  # store attention as the method's `keep` reduces it (no gradients)
    reduce: bool  # reduce each layer in the backward pass (`Explainer.reduce`)
    fold: bool  # fold the layers into a running product in forward order (`Explainer.fold`)
    heads: Optional[str]  # fuse heads while recording ('mean' / 'max' / 'min')
    one_pass: bool  # refuse a model that runs the image twice in one forward

    @classmethod
    def of(cls, explainer) -> "RecordingPlan":
        needs = explainer.requirements()
        attention = ATTENTION in needs
        live = MODEL in needs and bool(needs & {ATTENTION, TOKENS})
        gradients = explainer.uses_gradients() or live
        return cls(
            needs=needs,
            attention=attention,
            tokens=bool(needs & {TOKENS, TOKEN_GRAD}) or not attention,
            states=BLOCK_STATES in needs,
            gradients=gradients,
            live=live,
            keep=attention and not gradients,
            reduce=(explainer.reduces() and {ATTENTION, ATTENTION_GRAD} <= needs and not live
                    and explainer.plain_gradients),
            fold=explainer.folds() and attention and not gradients,
            heads=explainer.fused_heads() if attention and not gradients else None,
            one_pass=attention or explainer.one_token_set,
        )

    @property
    def attention_gradients(self) -> bool:
        return ATTENTION_GRAD in self.needs

    @property
    def token_gradients(self) -> bool:
        return TOKEN_GRAD in self.needs

    @property
    def runs_model(self) -> bool:
        """The method's own math runs the model (autograd enabled while it explains)."""
        return MODEL in self.needs
