"""Token states: the sequence of tokens after each block, for methods that read features.

Grad-CAM reads one late block's token features and their gradient, LeGrad applies the
model's final norm and head to every block's tokens, and model-agnostic methods (integrated
gradients, occlusion, RISE) need nothing but a token layout. All of them get it here, from
forward hooks on the modules an adapter names as token sites (`Adapter.token_sites`),
without recording attention at all. On a hierarchical model a site may be a stage (Swin:
the last stage's feature map); hierarchical families whose attention vitx does not roll out
(MaxViT, DaViT, LeViT, ...: `adapters/hierarchical.py`) are explained this way only.

A site's output may be (B, N, D) tokens, or a (B, H, W, C) / (B, C, H, W) feature map;
methods always see (B, N, D) (`as_sequence`), and the layout of a feature map is its grid.
"""
import math
from contextlib import ExitStack, contextmanager
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from ..errors import VitxError
from .layout import MEAN_TOKEN, TokenLayout


def default_token_sites(model: nn.Module) -> List[nn.Module]:
    """The blocks of a model found by structure: the shallowest nn.ModuleList / nn.Sequential
    (not the model itself) of at least two children that each have sub-modules (blocks, not
    single layers such as an MLP's Linear/GELU); the longest one at equal depth.

    That is `blocks` (timm, hand-written ViTs), `encoder.layers` (torchvision ViT),
    `encoder.layer` (Hugging Face), `layers` / `features` (timm and torchvision Swin, whose
    stages are the blocks: the last one is the last stage's feature map).
    """
    best, best_key = [], None
    for name, module in model.named_modules():
        if not name or not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        children = list(module.children())
        if len(children) < 2 or not all(any(True for _ in c.children()) for c in children):
            continue
        key = (name.count("."), -len(children))
        if best_key is None or key < best_key:
            best, best_key = children, key
    return best


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or "norm" in type(module).__name__.lower()


def default_mid_sites(blocks: List[nn.Module]) -> List[nn.Module]:
    """Each block's second normalisation among its direct children, in registration order: in
    a pre-norm block (x + attn(norm1(x)), then + mlp(norm2(.))) its input is the residual
    stream after attention. A block without two norms has no such site (an error)."""
    sites = []
    for index, block in enumerate(blocks):
        norms = [m for m in block.children() if _is_norm(m)]
        if len(norms) < 2:
            raise VitxError(
                f"block {index} ({type(block).__name__}) has no second norm whose input is the residual stream after "
                "attention; methods that read it need a pre-norm block or an adapter that names it (Adapter.mid_sites)"
            )
        sites.append(norms[1])
    return sites


@contextmanager
def hook_block_inputs(sites: List[nn.Module], record: Callable[[int, object], None]):
    """Forward pre-hooks on `sites` calling record(site index, first input); removed on exit."""
    handles = []
    try:
        for index, site in enumerate(sites):
            handles.append(site.register_forward_pre_hook(
                lambda mod, args, kwargs, i=index: record(i, args[0] if args else next(iter(kwargs.values()))),
                with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def hook_token_sites(sites: List[nn.Module], record: Callable[[int, object], None]):
    """Forward hooks on `sites` calling record(site index, output); removed on exit."""
    handles = []
    try:
        for index, site in enumerate(sites):
            handles.append(site.register_forward_hook(lambda mod, inp, out, i=index: record(i, out)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def first_tensor(output) -> Optional[torch.Tensor]:
    """A block's output tokens (blocks that return (tokens, extra) tuples give their first)."""
    if torch.is_tensor(output):
        return output
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    return None


def channels_last(state: torch.Tensor, input_size: Optional[Tuple[int, int]]) -> bool:
    """Whether a (B, ., ., .) feature map is (B, H, W, C) (token models: Swin) rather than
    (B, C, H, W): the layout whose spatial sides have the input's aspect ratio; channels
    last when both do (it is what transformer stages return)."""
    if input_size is None:
        return True
    height, width = input_size
    if state.shape[1] * width == state.shape[2] * height:
        return True
    if state.shape[2] * width == state.shape[3] * height:
        return False
    raise VitxError(
        f"token states of shape {tuple(state.shape)} match neither (B, H, W, C) nor (B, C, H, W) for an "
        f"input of {height}x{width}; the model needs an adapter that names its token sites"
    )


def as_sequence(state: torch.Tensor, input_size) -> torch.Tensor:
    """(B, N, D) view of a site's output: tokens as they are, feature maps flattened row by row."""
    if state.dim() == 3:
        return state
    if channels_last(state, input_size):
        return state.flatten(1, 2)
    return state.flatten(2).transpose(1, 2)


def check_state(state, site: int, batch_size: Optional[int]) -> torch.Tensor:
    tensor = first_tensor(state)
    if tensor is None or tensor.dim() not in (3, 4):
        shape = tuple(tensor.shape) if tensor is not None else type(state).__name__
        raise VitxError(
            f"token site {site} returned {shape}, not (batch, tokens, dim) tokens or a (batch, h, w, c) "
            "feature map; the model needs an adapter that names its token sites (Adapter.token_sites)"
        )
    if batch_size is not None and tensor.shape[0] != batch_size:
        raise VitxError(
            f"token site {site} returned batch {tensor.shape[0]} for a model called with batch {batch_size} "
            "(tokens folded into the batch, e.g. windows); the model needs an adapter that names its token sites"
        )
    return tensor


def grid_for(num_patches: int, input_size) -> Optional[Tuple[int, int]]:
    """The h x w grid of `num_patches` with the aspect ratio of the input, if there is one."""
    height, width = input_size if input_size is not None else (1, 1)
    h = round(math.sqrt(num_patches * height / width))
    if h > 0 and num_patches % h == 0 and h * width == (num_patches // h) * height:
        return h, num_patches // h
    return None


def layout_from_state(adapter, model, state: torch.Tensor, input_size) -> TokenLayout:
    """The token layout implied by the last token state: a feature map's own grid, or the
    adapter's layout for N tokens (falling back to 'leading extra tokens, then a grid with
    the input's aspect ratio' when the adapter cannot tell)."""
    if state.dim() == 4:
        grid = tuple(state.shape[1:3]) if channels_last(state, input_size) else tuple(state.shape[2:4])
        return TokenLayout(prefix={}, num_prefix=0, grid=grid, default_token=MEAN_TOKEN)
    num_tokens = state.shape[1]
    try:
        layout = adapter.layout(model, input_size, num_tokens)
    except VitxError:
        layout = None
    if layout is not None and layout.num_tokens == num_tokens:
        return layout
    from .layout import infer_layout

    for prefix in range(num_tokens):
        grid = grid_for(num_tokens - prefix, input_size)
        if grid is not None:
            return infer_layout(num_tokens, grid)
    raise VitxError(f"cannot tell the patch grid of {num_tokens} tokens for an input of {input_size}")


class TokenCapture:
    """The token-state half of a recording: each block's output (and with `states`, its input
    and its residual stream after attention), from the sites the adapter names. The
    `AttentionRecorder` owns one when a method reads token states, and delegates to it."""

    def __init__(self, adapter, model: nn.Module, states: bool = False):
        self.adapter, self.model, self.record_states = adapter, model, states
        self.reset(None, None)

    def reset(self, batch_size: Optional[int], input_size) -> None:
        """At every call of the model: forget the last call's states."""
        self.batch_size, self.input_size = batch_size, input_size
        self.token_states: List[torch.Tensor] = []  # as the sites returned them (graph tensors)
        self.block_inputs: List[torch.Tensor] = []
        self.block_mids: List[torch.Tensor] = []

    def attach(self) -> ExitStack:
        sites = self.adapter.token_sites(self.model)
        if not sites:
            raise VitxError(
                f"cannot find the blocks of {type(self.model).__name__} (no nn.ModuleList / nn.Sequential of "
                f"blocks): the {self.adapter.name!r} adapter must name its token sites (Adapter.token_sites)"
            )
        stack = ExitStack()
        stack.enter_context(hook_token_sites(
            sites, lambda site, output: self.token_states.append(check_state(output, site, self.batch_size))))
        if self.record_states:
            stack.enter_context(hook_block_inputs(sites, lambda i, x: self.block_inputs.append(x)))
            stack.enter_context(hook_block_inputs(self.adapter.mid_sites(self.model),
                                                  lambda i, x: self.block_mids.append(x)))
        return stack

    @property
    def tokens(self) -> List[torch.Tensor]:
        """Token states after each block as (B, N, D) (feature maps flattened row by row)."""
        return [as_sequence(s, self.input_size) for s in self.token_states]

    @property
    def block_states(self):
        """Per block, (input, residual stream after attention, output), each (B, N, D) detached."""
        outputs = self.tokens
        if not (len(self.block_inputs) == len(self.block_mids) == len(outputs)):
            raise VitxError(f"recorded {len(self.block_inputs)} block inputs, {len(self.block_mids)} states after "
                            f"attention and {len(outputs)} outputs: the blocks are not run once each in order")
        return [tuple(as_sequence(t, self.input_size).detach() for t in triple)
                for triple in zip(self.block_inputs, self.block_mids, outputs)]

    def gradients(self, score: torch.Tensor, retain_graph: bool = False) -> List[torch.Tensor]:
        """d(score)/d(token states) per block, as (B, N, D) like `tokens` (autograd.grad: no .grad touched)."""
        if not self.token_states or not all(s.requires_grad for s in self.token_states):
            raise VitxError("token gradients need a forward with gradients enabled, through every block")
        grads = torch.autograd.grad(score, self.token_states, allow_unused=True, retain_graph=retain_graph)
        return [as_sequence(torch.zeros_like(s) if g is None else g, self.input_size)
                for s, g in zip(self.token_states, grads)]

    def layout(self) -> TokenLayout:
        """The layout from the last token state, when no attention was recorded."""
        if not self.token_states:
            raise VitxError(f"no token states were recorded for {type(self.model).__name__}")
        return layout_from_state(self.adapter, self.model, self.token_states[-1], self.input_size)
