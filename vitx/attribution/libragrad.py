"""LibraGrad (Mehri, Soleymani Baghshah & Pilehvar, CVPR 2025): balanced gradients for ViTs.

Plain gradients of a Transformer are not FullGrad-complete: the score is not the sum of
input x gradient and bias x gradient terms, because LayerNorm's division by the standard
deviation, the attention's softmax over q.k and the gates of GELU / SiLU send gradient down
paths that carry no share of the output. LibraGrad prunes those paths in the backward pass,
the forward value untouched (the authors' 'LX1' configuration, timm fork
`timm/night/decomposition.py`):

- LayerNorm: the variance is detached (`layer_norm_gradient_mode = LineX_1`);
- attention: q and k are detached (`attention_gradient_mode = LineX_1`, `fair_qkv`): the
  attention probabilities act as constant mixing weights, the gradient reaches the tokens
  through the values only. The probabilities stay differentiable themselves (a fresh leaf),
  so d score / d attention is still there for attention methods (Chefer, grad rollout);
- GELU, SiLU (and Mish, hardswish: x * gate(x) as well): the gate is detached,
  x * gate(x).detach(), whose gradient is f(x) / x (`gelu_gradient_mode = LineX_ZO`); other
  element-wise functions (sigmoid, tanh, ELU, softplus) are no gates and keep their gradient;
- a product of two input-dependent tensors (a GLU's act(a) * b) gets half the gradient on
  each factor (the authors' 'DU' rule for gated MLPs);
- linear layers, convolutions, residual additions: unchanged.

With these rules the network is linear in its token embeddings up to biases, so
embeddings x gradient plus every bias x gradient adds up to the score (FullGrad-complete;
`token_fullgrad`). It is a gradient MODE: any gradient method runs its forward under
`LibraGradRules` (the core does it for a method whose option `grad_mode` is 'libragrad').
The rules reuse the function-rule machinery of `vitx.attribution.lrp`: LibraGrad's LayerNorm,
gate and product rules are LRP's LN, identity and uniform rules in gradient x input form,
and its attention rule is CP-LRP's, so this module only states where they differ.
"""
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VitxError
from .options import Option
from .lrp import _ELEMENTWISE, LRPRules, _argument, _live, frozen_parameters

GRAD_MODES = ("plain", "libragrad")

# the shared option of every gradient method that supports the modes
GRAD_MODE_OPTION = Option(
    "grad_mode", str, "plain",
    "plain: the model's own gradients; libragrad: LibraGrad's balanced backward (LayerNorm std, attention "
    "q/k and activation gates pruned; Mehri et al., CVPR 2025)", GRAD_MODES,
)

# activations of the form x * gate(x), whose gate LibraGrad detaches (gradient f(x) / x, LRP's
# identity rule); every other element-wise function (sigmoid, tanh, ELU, softplus, ...) is no
# gate and keeps its own gradient
_GATED = {F.gelu, F.silu, F.mish, F.hardswish}
_NOT_GATES = _ELEMENTWISE - _GATED


class LibraGradRules(LRPRules):
    """Inside `with LibraGradRules():`, a forward builds LibraGrad's backward (see the module).

    Parameters must not require gradients meanwhile (`frozen_parameters`): "input-dependent"
    is `requires_grad`. `biases`, when given, collects bias x gradient of every linear layer
    and LayerNorm applied after the token embeddings (see `BiasTerms`).
    """

    def __init__(self, biases: Optional["BiasTerms"] = None):
        super().__init__(variant="cp")  # attention: CP-LRP's constant weights (fused SDPA with q, k detached)
        self.biases = biases

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _NOT_GATES:  # no gate: its own gradient
            return func(*args, **(kwargs or {}))
        return super().__torch_function__(func, types, args, kwargs)

    def _softmax(self, func, args, kwargs):
        probs = func(*args, **kwargs)
        if not probs.requires_grad or probs.dim() < 3:  # (batch, classes): a head's softmax, no attention
            return probs
        # attention: constant weights for the tokens, yet a differentiable leaf for attention methods
        leaf = probs.detach().requires_grad_(True)
        leaf._vitx_constant = True
        return leaf

    def _shares(self, operand) -> bool:
        return _live(operand) and not _constant(operand)  # attention @ values: linear in the values

    def _linear(self, func, args, kwargs):
        out = super()._linear(func, args, kwargs)
        if self.biases is not None and func is F.linear:
            self.biases.add(out, _argument(args, kwargs, 2, "bias"))
        return out

    def _layer_norm(self, args, kwargs):
        x = _argument(args, kwargs, 0, "input")
        if self.biases is not None:
            self.biases.start(x)
        out = super()._layer_norm(args, kwargs)
        if self.biases is not None:
            self.biases.add(out, _argument(args, kwargs, 3, "bias"))
        return out


def _constant(value) -> bool:
    """An attention leaf of `LibraGradRules._softmax`, or a view of one."""
    if not torch.is_tensor(value):
        return False
    return getattr(value, "_vitx_constant", False) or getattr(value._base, "_vitx_constant", False)


class BiasTerms:
    """Bias x gradient of the linear layers and LayerNorms of one forward, per token.

    The token embeddings are taken to be the input of the first LayerNorm that sees (B, N, D)
    tokens (a pre-norm ViT's first block, or its pre-norm: what the blocks read); bias terms
    of operations before that point are inside the embeddings. An output laid out (B, N, .)
    gives its bias terms to its tokens; anything else (the head after pooling) is
    `unassigned`, one number per image. Sequence-first (N, B, .) outputs (nn.MultiheadAttention
    inside) are recognised when N != B.
    """

    def __init__(self, batch: int):
        self.batch = batch
        self.embeddings: Optional[Tensor] = None
        self._grads = []  # (kind, tensor) in backward order

    def start(self, x: Tensor) -> None:
        if self.embeddings is None and _live(x) and x.dim() == 3 and x.shape[0] == self.batch:
            self.embeddings = x

    def add(self, out: Tensor, bias: Optional[Tensor]) -> None:
        if self.embeddings is None or bias is None or not out.requires_grad:
            return
        bias = bias.detach()
        tokens = self.embeddings.shape[1]
        if out.dim() == 3 and tuple(out.shape[:2]) == (self.batch, tokens):
            kind = "tokens"
        elif out.dim() == 3 and tuple(out.shape[:2]) == (tokens, self.batch):
            kind = "sequence_first"
        else:
            kind = "unassigned"
        out.register_hook(lambda grad: self._grads.append((kind, (grad * bias).detach())))

    def per_token(self) -> Tensor:
        """(B, N) bias terms of the token-wise operations."""
        total = self.embeddings.new_zeros(self.embeddings.shape[:2])
        for kind, term in self._grads:
            if kind == "tokens":
                total = total + term.sum(dim=-1)
            elif kind == "sequence_first":
                total = total + term.sum(dim=-1).transpose(0, 1)
        return total.detach()

    def unassigned(self) -> Tensor:
        """(B,) bias terms of operations that do not act per token (pooling heads)."""
        total = self.embeddings.new_zeros(self.batch)
        for kind, term in self._grads:
            if kind == "unassigned":
                total = total + term.reshape(self.batch, -1).sum(dim=-1)
        return total.detach()


def gradient_rules(mode: str, model: nn.Module):
    """The context a forward runs in for gradient `mode` ('plain': nothing changes)."""
    if mode == "plain":
        return nullcontext()
    if mode == "libragrad":
        return _libragrad(model)
    raise VitxError(f"unknown gradient mode {mode!r}; use one of {', '.join(GRAD_MODES)}")


@contextmanager
def _libragrad(model: nn.Module):
    with frozen_parameters(model), LibraGradRules():
        yield


@dataclass
class FullGradResult:
    score: Tensor  # (B,)
    embeddings: Tensor  # (B, N) embeddings x gradient, summed over channels
    biases: Tensor  # (B, N) bias x gradient of the token-wise layers
    unassigned: Tensor  # (B,) bias x gradient of the layers after pooling (the head)

    @property
    def relevance(self) -> Tensor:
        return self.embeddings + self.biases


def token_fullgrad(model: nn.Module, pixels: Tensor, score) -> FullGradResult:
    """FullGrad on the tokens under LibraGrad: one forward, one backward of score(output).sum().

    relevance of token t = embedding_t . gradient_t + sum over the token-wise layers of
    bias . gradient at t. Under LibraGrad the relevances plus `unassigned` add up to the
    score (test: completeness), which plain gradients do not.
    """
    terms = BiasTerms(pixels.shape[0])
    with frozen_parameters(model), torch.enable_grad():
        x = pixels.detach().requires_grad_(True)
        with LibraGradRules(biases=terms):
            output = model(x)
        if terms.embeddings is None:
            raise VitxError("libragrad: the model applies no LayerNorm to (batch, tokens, dim) tokens; "
                            "vitx finds the token embeddings as the input of the first one")
        scores = score(output)
        (grad,) = torch.autograd.grad(scores.sum(), terms.embeddings)
    embedded = (terms.embeddings * grad).sum(dim=-1).detach()
    return FullGradResult(score=scores.detach(), embeddings=embedded, biases=terms.per_token(),
                          unassigned=terms.unassigned())
