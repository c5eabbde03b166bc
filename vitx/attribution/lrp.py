"""Layer-wise relevance propagation by function, for any model vitx can run.

LRP in the gradient x input form (Achtibat et al., ICML 2024, 'AttnLRP'): the backward pass
is changed, operation by operation, so that `input * d score / d input` at the pixels is the
LRP relevance. Rather than patching one library's module classes (as LXT does for
torchvision's ViT), `LRPRules` is a torch function mode: during one forward it sees every call
of the functions below, however the model reached them (nn.Module, functional call, tensor
method, `@`), and swaps each for the same value with an LRP backward:

- elementwise non-linearities (gelu, silu, tanh, sigmoid, ...): identity rule,
  d in = d out * f(x) / x, so the relevance passes through unchanged;
- layer_norm / rms_norm: the normalising statistic is detached (the LN rule), which leaves a
  linear map whose gradient x input is the epsilon-0 rule with the bias absorbing its share;
- linear / convolution: epsilon rule, d out scaled by z / (z + eps sign z); eps = 0 (the
  default, as in LXT's efficient mode) is their plain gradient: gradient x input never divides
  by z, so it needs no stabiliser;
- softmax: AttnLRP's rule R_in = x (R_out - s sum R_out) is, in gradient x input form, exactly
  the softmax's own gradient (so it stays), while CP-LRP (Ali et al. 2022) treats the attention
  as constant weights: the softmax output is detached;
- a product of two input-dependent tensors (q @ k^T, attention @ v, x * gate): uniform rule,
  half of the relevance to each factor (gradient halved);
- F.scaled_dot_product_attention and F.multi_head_attention_forward: decomposed into explicit
  attention whose pieces then follow the rules above.

"Input-dependent" means `requires_grad`: `input_relevance` freezes the parameters for the
explained forward (and restores them), so only tensors computed from the pixels qualify.
Everything else passes through untouched; outside the `with` block the model is unchanged.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..capture.attention_math import explicit_attention, multi_head_attention
from ..errors import VitxError

VARIANTS = ("attnlrp", "cp")

Tensor = torch.Tensor


def _stabilise(x: Tensor, epsilon: float) -> Tensor:
    """x + epsilon * sign(x), with sign(0) = +1: a denominator that never crosses zero."""
    return x + torch.where(x >= 0, epsilon, -epsilon).to(x.dtype)


def _tiny(dtype: torch.dtype) -> float:
    return 1e-12 if dtype in (torch.float32, torch.float64) else 1e-6


def _scale_gradient(tensor: Tensor, factor) -> Tensor:
    """Multiply the gradient arriving at `tensor` by `factor` (a number or a tensor).

    A tensor hook, not a custom Function returning its input: the model may modify the
    tensor in place afterwards, which a Function's as-is output forbids, while a hook keeps
    acting on the gradient of the value it was registered on.
    """
    if tensor.requires_grad:
        tensor.register_hook(lambda grad: grad * factor)
    return tensor


class _IdentityRule(torch.autograd.Function):
    """y = f(x) forward; d x = d y * y / x backward, so y * d y == x * d x (relevance unchanged)."""

    @staticmethod
    def forward(ctx, x, function, kwargs):
        y = function(x, **kwargs)
        ctx.save_for_backward(y / _stabilise(x, _tiny(x.dtype)))
        return y

    @staticmethod
    def backward(ctx, grad):
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None, None


def _live(value) -> bool:
    """A tensor that depends on the explained input (parameters are frozen meanwhile)."""
    return torch.is_tensor(value) and value.requires_grad


_ELEMENTWISE = {
    F.gelu, F.silu, F.mish, F.elu, F.selu, F.celu, F.softplus, F.hardswish, F.hardsigmoid,
    torch.tanh, torch.sigmoid, Tensor.tanh, Tensor.sigmoid, F.tanh, F.sigmoid,
}
_SOFTMAX = {torch.softmax, F.softmax, Tensor.softmax}
_PRODUCTS = {torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.bmm, Tensor.bmm, torch.mul, Tensor.mul, Tensor.__mul__}
_LINEAR = {F.linear, F.conv1d, F.conv2d, F.conv3d}
_LAYER_NORM = {F.layer_norm, torch.layer_norm}
_RMS_NORM = {F.rms_norm, torch.rms_norm}


def _argument(args, kwargs, index, name, default=None):
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


class LRPRules(TorchFunctionMode):
    """Inside `with LRPRules(...)`, a forward builds a graph whose gradient x input is LRP.

    variant: 'attnlrp' (relevance flows through the attention softmax) or 'cp' (attention
    treated as constant, CP-LRP). epsilon: of the epsilon rule on linear layers and
    convolutions. on_attention: called with every attention probability tensor (softmax over
    the last dim of a square score matrix), returns the tensor that flows on.
    """

    def __init__(self, variant: str = "attnlrp", epsilon: float = 0.0,
                 on_attention: Optional[Callable[[Tensor], Tensor]] = None):
        super().__init__()
        if variant not in VARIANTS:
            raise VitxError(f"unknown LRP variant {variant!r}; use one of {', '.join(VARIANTS)}")
        if epsilon < 0:
            raise VitxError(f"the LRP epsilon must be >= 0, got {epsilon}")
        self.variant = variant
        self.epsilon = float(epsilon)
        self.on_attention = on_attention

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ELEMENTWISE:
            return self._elementwise(func, args, kwargs)
        if func in _SOFTMAX:
            return self._softmax(func, args, kwargs)
        if func in _PRODUCTS:
            return self._product(func, args, kwargs)
        if func in _LINEAR:
            return self._linear(func, args, kwargs)
        if func in _LAYER_NORM:
            return self._layer_norm(args, kwargs)
        if func in _RMS_NORM:
            return self._rms_norm(args, kwargs)
        if func is torch.baddbmm or func is Tensor.baddbmm:
            return self._baddbmm(args, kwargs)
        if func is torch.einsum:
            return self._einsum(args, kwargs)
        if func is F.scaled_dot_product_attention:
            if self.variant == "cp" and self.on_attention is None:
                # attention held constant: the fused kernel with q and k detached is CP-LRP
                q, k = _argument(args, kwargs, 0, "query"), _argument(args, kwargs, 1, "key")
                rest = {n: v for n, v in kwargs.items() if n not in ("query", "key")}
                return func(q.detach(), k.detach(), *args[2:], **rest)
            with self:  # re-enter: the explicit attention's matmuls and softmax follow the rules
                return explicit_attention(*args, **kwargs)[0]
        if func is F.multi_head_attention_forward:
            with self:  # decomposed (vitx.capture.attention_math): its pieces follow the rules
                return multi_head_attention(*args, **kwargs)
        return func(*args, **kwargs)

    # --- rules -------------------------------------------------------------------------
    def _elementwise(self, func, args, kwargs):
        x = args[0]
        if not _live(x):
            return func(*args, **kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}  # the rule needs x intact
        extra = args[1:]
        return _IdentityRule.apply(x, lambda t, **kw: func(t, *extra, **kw), kwargs)

    def _softmax(self, func, args, kwargs):
        probs = func(*args, **kwargs)
        if not probs.requires_grad:
            return probs
        if self.variant == "cp":
            return probs.detach()
        dim = _argument(args, kwargs, 1, "dim")
        square = probs.dim() >= 3 and probs.shape[-1] == probs.shape[-2]
        if self.on_attention is not None and square and dim in (-1, probs.dim() - 1):
            probs = self.on_attention(probs)
        return probs

    def _shares(self, operand) -> bool:
        """Whether a factor of a product takes a share of its relevance (the uniform rule)."""
        return _live(operand)

    def _product(self, func, args, kwargs):
        out = func(*args, **kwargs)
        if len(args) >= 2 and self._shares(args[0]) and self._shares(args[1]):
            _scale_gradient(out, 0.5)
        return out

    def _baddbmm(self, args, kwargs):
        names = ("input", "batch1", "batch2")
        values = [_argument(args, kwargs, i, n) for i, n in enumerate(names)]
        beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
        product = self._product(torch.bmm, values[1:], {})
        return beta * values[0] + alpha * product

    def _einsum(self, args, kwargs):
        out = torch.einsum(*args, **kwargs)
        operands = args[1:]
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = operands[0]
        sharing = sum(self._shares(o) for o in operands)
        if sharing >= 2:
            _scale_gradient(out, 1.0 / sharing)
        return out

    def _linear(self, func, args, kwargs):
        out = func(*args, **kwargs)
        if self.epsilon > 0 and _live(args[0]) and out.requires_grad:
            z = out.detach()
            _scale_gradient(out, z / _stabilise(z, self.epsilon))
        return out

    def _layer_norm(self, args, kwargs):
        x = _argument(args, kwargs, 0, "input")
        shape = _argument(args, kwargs, 1, "normalized_shape")
        weight, bias = _argument(args, kwargs, 2, "weight"), _argument(args, kwargs, 3, "bias")
        eps = _argument(args, kwargs, 4, "eps", 1e-5)
        dims = tuple(range(-len(tuple(shape)), 0))
        centred = x - x.mean(dim=dims, keepdim=True)
        std = (centred.pow(2).mean(dim=dims, keepdim=True) + eps).sqrt()
        y = centred / std.detach()
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        return y

    def _rms_norm(self, args, kwargs):
        x = _argument(args, kwargs, 0, "input")
        shape = _argument(args, kwargs, 1, "normalized_shape")
        weight = _argument(args, kwargs, 2, "weight")
        eps = _argument(args, kwargs, 3, "eps")
        eps = torch.finfo(x.dtype).eps if eps is None else eps
        dims = tuple(range(-len(tuple(shape)), 0))
        y = x * torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + eps).detach()
        return y if weight is None else y * weight


@contextmanager
def frozen_parameters(model: nn.Module):
    """Parameters stop requiring gradients inside (so only input-dependent tensors do), then
    each gets its own flag back."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@dataclass
class LRPResult:
    score: Tensor  # (B,) the explained scores
    relevance: Tensor  # (B, C, H, W) relevance of each input pixel
    attention: Optional[List[Tensor]] = None  # relevance of each attention map, when asked for


def input_relevance(model: nn.Module, pixels: Tensor, score: Callable, variant: str = "attnlrp",
                    epsilon: float = 0.0, attention: bool = False) -> LRPResult:
    """One forward under `LRPRules` and one backward of `score(output).sum()`.

    Relevance of the pixels = pixels * modified gradient (LXT's ViT recipe: relevance at the
    input, summed per patch by the caller). With `attention`, also the relevance of every
    attention map, A * (modified gradient at A), in forward order.
    """
    recorded: List[Tensor] = []

    def keep(probs):
        recorded.append(probs)
        return probs

    with frozen_parameters(model), torch.enable_grad():
        x = pixels.detach().requires_grad_(True)
        with LRPRules(variant, epsilon, on_attention=keep if attention else None):
            output = model(x)
        scores = score(output)
        wrt = [x] + recorded
        grads = torch.autograd.grad(scores.sum(), wrt, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads)]
    relevance = (x * grads[0]).detach()
    maps = [(a * g).detach() for a, g in zip(recorded, grads[1:])] if attention else None
    return LRPResult(score=scores.detach(), relevance=relevance, attention=maps)
