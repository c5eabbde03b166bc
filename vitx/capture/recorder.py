"""`AttentionRecorder`: record the attention of one forward pass, then leave no trace.

The recorder owns every hook and flag change (through its adapter and an ExitStack), so
explainers never touch the model, and the model is restored on exit even when the forward
raises.
"""
from contextlib import ExitStack
from typing import Callable, List, Optional

import torch
from torch import nn

from ..errors import VitxError
from .fused import Reduce
from .model_state import model_lock
from .layout import MEAN_TOKEN, TokenLayout, infer_layout
from ..unwrap import unwrap
from .stages import StageLayer
from .token_states import TokenCapture

Keep = Callable[[int, torch.Tensor], Optional[torch.Tensor]]
# (layer, attention, running state or None, layout) -> the new running state, or None to keep the layer instead
Fold = Callable[[int, torch.Tensor, Optional[torch.Tensor], TokenLayout], Optional[torch.Tensor]]

SUPPORTED = (
    "timm attention modules, Hugging Face transformers vision models, open_clip image towers, "
    "torch.nn.MultiheadAttention (torchvision ViT), and any model that calls "
    "F.scaled_dot_product_attention or a softmax over a square (tokens x tokens) score matrix"
)


class AttentionRecorder:
    """Context manager that records post-softmax attention, layer by layer, in call order.

    `attentions[i]` is layer i's attention, (B, heads, N, N), for the last call of the
    model inside the context. `keep(layer, attention)` may shrink what is stored (e.g.
    fuse the heads, or drop layers an explainer does not read: those become None); it is
    only safe when no gradient is needed, since gradients need the tensors of the graph.
    """

    def __init__(self, model: nn.Module, adapter=None, keep: Optional[Keep] = None,
                 attention: bool = True, tokens: bool = False, layout=None, reduce: Optional[Reduce] = None,
                 fold: Optional[Fold] = None, heads: Optional[str] = None, states: bool = False,
                 one_pass: bool = False):
        self.model = unwrap(model)  # call `recorder.model` for a DataParallel / compiled model
        self.layout_override = layout
        self.adapter = adapter
        self.keep = keep
        self.record_attention = attention  # False: the adapter's attention capture is not attached at all
        self.record_tokens = tokens or states  # token states after each block (see token_states.py)
        self.record_states = states  # also each block's input and its stream after attention
        # refuse a model that runs the image twice in one forward (see _on_conv): always when attention is
        # recorded, and for a method whose math reads one pass's tokens (`Explainer.one_token_set`)
        self.one_pass = attention or one_pass
        self._tokens: Optional[TokenCapture] = None  # made on entry, once the adapter is known
        self.reduce = reduce  # per-layer reduction of (attention, gradient): see `reduced`
        self.fold = fold  # forward-order accumulation of the layers (no gradient): see `_record`
        self.heads = heads  # 'mean' / 'max' / 'min': record attention fused over heads (no gradient)
        self.heads_fused = False  # whether it is, from q and k beside the fused kernel (`_attend_heads`)
        self.folded: Optional[torch.Tensor] = None
        self.fused = False
        self._anchors: List[torch.Tensor] = []
        self._maps: List[Optional[torch.Tensor]] = []
        self.attentions: List[Optional[torch.Tensor]] = []
        self.graph_attentions: List[torch.Tensor] = []
        self.input_size = None
        self.batch_size = None
        self.num_tokens = None
        self._stages = None  # stage layers (hierarchical models): (the first, the last)
        self._stack: Optional[ExitStack] = None
        self._pixels = None  # (C, H, W) of the model call's image batch
        self._stem_calls: List[nn.Module] = []  # convolutions over the image in this call (see _on_conv)

    def __enter__(self) -> "AttentionRecorder":
        if self.adapter is None:
            from ..registry import find_adapter

            self.adapter = find_adapter(self.model)
        stack = ExitStack()
        try:
            stack.enter_context(model_lock(self.model))
            handle = self.model.register_forward_pre_hook(self._on_model_call, with_kwargs=True)
            stack.callback(handle.remove)
            if self.record_attention:
                can_fuse = (self.reduce is not None or self.heads is not None) and self.adapter.can_fuse(self.model)
                self.fused = can_fuse and self.reduce is not None
                self.heads_fused = can_fuse and not self.fused
                if self.fused:
                    stack.enter_context(self.adapter.attach_fused(self.model, self._attend, self._record_reduced))
                elif self.heads_fused:
                    stack.enter_context(self.adapter.attach_fused(self.model, self._attend_heads, self._record_heads))
                else:
                    stack.enter_context(self.adapter.attach(self.model, self._record))
            if self.record_tokens:
                self._tokens = TokenCapture(self.adapter, self.model, states=self.record_states)
                stack.enter_context(self._tokens.attach())
            if self.one_pass:
                for conv in (m for m in self.model.modules() if _embeds(m)):
                    stack.callback(conv.register_forward_pre_hook(self._on_conv).remove)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc_info) -> bool:
        self._stack.close()
        return False

    def _on_model_call(self, module, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()), None)
        self.input_size = tuple(x.shape[-2:]) if torch.is_tensor(x) and x.dim() >= 3 else None
        self.batch_size = x.shape[0] if torch.is_tensor(x) and x.dim() >= 1 else None
        self.attentions = []
        self.graph_attentions = []
        if self._tokens is not None:
            self._tokens.reset(self.batch_size, self.input_size)
        self.num_tokens = None
        self._stages = None
        self.folded = None
        self._anchors, self._maps = [], []
        self._pixels = tuple(x.shape[1:]) if torch.is_tensor(x) and x.dim() == 4 else None
        self._stem_calls = []

    def _on_conv(self, module, args):
        """Count the convolutions over the image itself (a patch embedding or stem: a 4-d input
        of the image's channels and size). A second one in one model call means the image
        passes through the network twice (an ensemble of ViTs, flip test-time augmentation):
        the recorded layers would be those of both passes in one list, and every attention-flow
        map a mixture equal to neither pass, so that is refused here, before it happens."""
        x = args[0] if args else None
        if self._pixels is None or not torch.is_tensor(x) or x.dim() != 4 or tuple(x.shape[1:]) != self._pixels:
            return
        self._stem_calls.append(module)
        if len(self._stem_calls) > 1:
            names = {id(m): n for n, m in self.model.named_modules()}
            first, second = (names.get(id(m), "?") for m in self._stem_calls[:2])
            how = (f"its stem {first!r} ran twice" if first == second
                   else f"two stems ran on it, {first!r} and {second!r}")
            raise VitxError(
                f"{type(self.model).__name__} runs the image through the network twice in one forward ({how}: an "
                "ensemble or test-time augmentation), so the recorded layers or tokens would be one pass's or a mix "
                "of both, and no single token flow describes the output. Explain each member / pass as its own model "
                "(e.g. vitx.explain(model.member, images)), or use a method that reads no attention "
                "(integrated_gradients, occlusion, rise)")

    def _check(self, attention) -> None:
        """Fail loudly on anything that is not one layer's token-by-token self-attention of
        this batch: such a tensor in the list would make every method silently wrong.
        `attention`: the tensor, or anything with its `shape` and `dim()`."""
        where = f"{self.adapter.name!r} adapter, layer {len(self.attentions)}"
        if isinstance(attention, StageLayer) or self._stages is not None:
            return self._check_stages(attention, where)
        if attention.dim() != 4:
            raise VitxError(
                f"recorded attention of shape {tuple(attention.shape)} ({where}): expected (batch, heads, tokens, "
                "tokens). This model's attention is not laid out per head; its family needs its own adapter"
            )
        if attention.shape[-1] != attention.shape[-2]:
            raise VitxError(
                f"recorded attention of shape {tuple(attention.shape)} ({where}) is not square: queries and keys "
                "are different token sets (class attention or cross attention), which attention-flow methods "
                "cannot chain. Use a method that reads token states or gradients (see `vitx methods`)"
            )
        if self.batch_size is not None and attention.shape[0] != self.batch_size:
            raise VitxError(
                f"recorded attention has batch {attention.shape[0]} but the model was called with batch "
                f"{self.batch_size} ({where}): the model attends over windows or folds tokens into the batch "
                "(windowed / hierarchical attention), so there is no single token-by-token attention per layer. "
                "Use a method that reads token states or gradients (see `vitx methods`)"
            )
        if self.num_tokens is not None and attention.shape[-1] != self.num_tokens:
            raise VitxError(
                f"layer {len(self.attentions)} attends over {attention.shape[-1]} tokens but earlier layers over "
                f"{self.num_tokens} ({where}): the token set changes between layers (pooling or merging), so "
                "attention cannot be rolled out. Use a method that reads token states or gradients"
            )

    def _check_stages(self, attention, where) -> None:
        """Stage layers (vitx.capture.stages: window or pooled attention of a hierarchical
        model) chain: each starts on the tokens the previous one ended on, or carries the merge
        from them. Mixed with dense layers: no single chain."""
        if not isinstance(attention, StageLayer) or (self.attentions and self._stages is None):
            raise VitxError(f"recorded stage and full-grid attention in one model ({where}): the adapter must "
                            "record every layer as window or pooled attention over the stage's tokens")
        if attention.dim() != 4 or (self.batch_size is not None and attention.shape[0] != self.batch_size):
            raise VitxError(f"recorded stage attention of shape {attention.shape} ({where}): expected "
                            f"(batch {self.batch_size}, heads, tokens, tokens)")
        if self._stages is None:
            if attention.reads != attention.num_tokens:
                raise VitxError(f"the first stage layer reads {attention.reads} tokens but writes "
                                f"{attention.num_tokens} ({where}): the maps need one token set to lie on")
            return
        if attention.reads != self._stages[1].num_tokens:
            raise VitxError(f"stage layer over {attention.reads} tokens follows a layer over "
                            f"{self._stages[1].num_tokens} ({where}): the adapter recorded no merge between them")

    def _record(self, attention: torch.Tensor) -> torch.Tensor:
        self._check(attention)
        if isinstance(attention, StageLayer):  # num_tokens: the first stage's, which the maps cover
            first = self._stages[0] if self._stages else attention.skeleton()
            self._stages = (first, attention.skeleton())
            self.num_tokens = first.num_tokens
        else:
            self.num_tokens = attention.shape[-1]
        if self.fold is not None and self._stages is None:  # stage layers are kept per layer (compact)
            running = self.fold(len(self.attentions), attention, self.folded, self._attention_layout())
            if running is not None:  # folded into the running state: nothing of the layer is kept
                self.folded = running
                self.attentions.append(None)
                return attention
        if self.keep is None:
            self.attentions.append(attention)
        else:
            self.attentions.append(self.keep(len(self.attentions), attention))
        if attention.requires_grad:
            self.graph_attentions.append(attention)
        return attention

    # token states (vitx.capture.token_states.TokenCapture): what a method reading features gets
    @property
    def token_states(self) -> List[torch.Tensor]:
        return self._tokens.token_states if self._tokens is not None else []

    @property
    def tokens(self) -> List[torch.Tensor]:
        """Token states after each block as (B, N, D) (feature maps flattened row by row)."""
        return self._tokens.tokens if self._tokens is not None else []

    @property
    def block_states(self):
        """Per block, (input, residual stream after attention, output), each (B, N, D) detached."""
        return self._tokens.block_states

    def token_gradients(self, score: torch.Tensor, retain_graph: bool = False) -> List[torch.Tensor]:
        """d(score)/d(token states) per block, as (B, N, D) like `tokens`."""
        if self._tokens is None:
            raise VitxError("token gradients need a recording of token states")
        return self._tokens.gradients(score, retain_graph)

    def _attend(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        """Fused mode: one layer's attention, fused forward, reduced in the backward."""
        from .fused import reduced_attention

        if q.dim() == 4 and q.shape[-2] != k.shape[-2]:  # cross attention: not recorded, as in the explicit path
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        layer, anchor = self._reduced_layer(_Shape(tuple(q.shape[:-1]) + (k.shape[-2],)), q.device)
        return reduced_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, anchor=anchor,
                                 layer=layer, reduce=self.reduce, store=self._store)

    def _attend_heads(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        """Head-fused mode (no gradient): the layer's output from the fused kernel, and its
        attention recorded already fused over heads, (B, 1, N, N) float32."""
        from .attention_math import explicit_attention
        from .fused import FORWARD_CHUNK_ELEMENTS, attention_with_fused_heads

        if q.dim() == 4 and q.shape[-2] != k.shape[-2]:  # cross attention: not recorded, as in the explicit path
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        if q.shape[0] * q.shape[1] * q.shape[-2] * k.shape[-2] <= FORWARD_CHUNK_ELEMENTS:
            # a layer smaller than one chunk: its per-head attention costs no more than the
            # chunked pass, and the explicit product saves the second pass over q and k
            return explicit_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                                      record=self._record_heads)[0]
        out, fused = attention_with_fused_heads(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                                                how=self.heads)
        self._record(fused[:, None])
        return out

    def _record_heads(self, probs: torch.Tensor) -> torch.Tensor:
        """Head-fused mode, for probabilities the model computes itself: recorded fused."""
        from .fused import fold_heads

        self._record(fold_heads(probs.detach().float(), self.heads)[:, None])
        return probs

    def _record_reduced(self, probs: torch.Tensor) -> torch.Tensor:
        """Fused mode, for attention whose probabilities the model computes itself (a
        hand-written softmax): passed on unchanged, reduced in the backward pass like the
        fused layers (softmax keeps its output for its own backward, so nothing is added)."""
        from .fused import reduced_probabilities

        layer, anchor = self._reduced_layer(probs, probs.device)
        return reduced_probabilities(probs, anchor=anchor, layer=layer, reduce=self.reduce, store=self._store)

    def _reduced_layer(self, attention, device):
        """Check and count one fused-mode layer: (its index, the zero-size anchor whose
        gradient runs its backward). Its map arrives in `_store` during the backward."""
        self._check(attention)
        self.num_tokens = attention.shape[-1]
        self.attentions.append(None)
        self._maps.append(None)
        anchor = torch.zeros(0, device=device, requires_grad=True)
        self._anchors.append(anchor)
        return len(self.attentions) - 1, anchor

    def _store(self, layer: int, fused: torch.Tensor) -> None:
        self._maps[layer] = fused

    def reduced(self, score: torch.Tensor) -> List[torch.Tensor]:
        """Per layer, the mean over heads of `reduce(layer, attention, d score / d attention)`
        (B, N, N), in the model's dtype.

        Fused mode (the adapter supports it): each layer is reduced in the backward pass as
        soon as its gradient exists, from attention recomputed from q and k, and nothing else
        of it is kept. Otherwise: from the recorded attention and its gradient, layer by
        layer (the same numbers, with every layer's attention alive at once).
        """
        self.check_recorded()
        if not self.fused:
            gradients = self.gradients(score)
            maps = []
            for layer, (attention, gradient) in enumerate(zip(self.graph_attentions, gradients)):
                values, grads = _values(attention), _values(gradient)  # a stage layer: its blocks
                term = self.reduce(layer, values.detach().float(), grads.float()).float()
                term = (term / values.shape[1]).to(values.dtype)
                maps.append(attention.like(term) if isinstance(attention, StageLayer) else term)
            return maps
        torch.autograd.grad(score, self._anchors, allow_unused=True)
        known = next((m for m in self._maps if m is not None), None)
        if known is None:
            raise VitxError("the target score does not depend on the model's attention: nothing to explain")
        return [torch.zeros_like(known) if m is None else m for m in self._maps]  # unused layer: zero gradient

    @property
    def num_layers(self) -> int:
        return len(self.attentions)

    def check_recorded(self) -> None:
        if not self.attentions:
            message = self.adapter.attention_refusal(self.model)  # a family with no token attention says why
            if message:
                raise VitxError(message)
            raise VitxError(
                f"no token attention was recorded for {type(self.model).__name__} (adapter {self.adapter.name!r}): "
                f"the forward ran but computed no token-by-token attention that vitx can see. vitx records "
                f"{SUPPORTED}. A model without attention (a CNN) can be explained by methods that need no "
                "attention (see `vitx methods`); another attention implementation needs an adapter (docs/howto/adding-an-adapter.md)"
            )

    @property
    def layout(self) -> TokenLayout:
        """Which token is which, for the input of the last forward."""
        if not self.record_attention:
            return self._token_layout()
        self.check_recorded()
        if self._stages is not None:  # hierarchical: maps on the first stage's grid, query on the last's tokens
            if self.layout_override is not None:
                raise VitxError("a windowed hierarchical model's layout comes from its stages (maps on the first "
                                "stage's grid): leave out layout= / --layout")
            first, last = self._stages
            default = self.adapter.head_token(self.model) or (last.prefix or (MEAN_TOKEN,))[0]
            return TokenLayout(prefix={name: i for i, name in enumerate(first.prefix)}, num_prefix=len(first.prefix),
                               grid=first.grid, default_token=default, query_tokens=last.num_tokens,
                               query_prefix=last.prefix)
        return self._attention_layout()

    def _attention_layout(self) -> TokenLayout:
        """The layout of the attention's token set (`num_tokens`), checked against it."""
        if isinstance(self.layout_override, TokenLayout):
            layout, source = self.layout_override, "the layout you passed"
        elif self.layout_override is not None:
            layout = checked_grid_layout(self.model, self.input_size, self.num_tokens, self.layout_override)
            source = "the grid you passed"
        else:
            layout, source = self.adapter.layout(self.model, self.input_size, self.num_tokens), f"adapter {self.adapter.name!r}"
        if layout.num_tokens != self.num_tokens:
            raise VitxError(
                f"{source} describes {layout.num_tokens} tokens "
                f"({layout.num_prefix} prefix + {layout.grid[0]}x{layout.grid[1]} patches) "
                f"but the attention has {self.num_tokens}"
            )
        return layout

    def _token_layout(self) -> TokenLayout:
        """The layout from the last token state, when no attention was recorded."""
        if self._tokens is None:
            raise VitxError(f"no token states were recorded for {type(self.model).__name__}")
        layout = self._tokens.layout()
        if self.layout_override is None:
            return layout
        if isinstance(self.layout_override, TokenLayout):
            if self.layout_override.num_tokens != layout.num_tokens:
                raise VitxError(f"the layout you passed describes {self.layout_override.num_tokens} tokens but the "
                                f"model's last token state has {layout.num_tokens}")
            return self.layout_override
        return checked_grid_layout(self.model, self.input_size, layout.num_tokens, self.layout_override)

    def gradients(self, score: torch.Tensor) -> List[torch.Tensor]:
        """d(score)/d(attention) for every layer, paired with `attentions` by construction.

        Uses autograd.grad, so no parameter's .grad is touched and nothing accumulates.
        """
        self.check_recorded()
        if len(self.graph_attentions) != len(self.attentions):
            raise VitxError(
                "attention gradients need a forward with gradients enabled "
                "(torch.enable_grad(), input or parameters requiring grad)"
            )
        values = [_values(a) for a in self.graph_attentions]
        grads = torch.autograd.grad(score, values, allow_unused=True)
        return [_like(a, torch.zeros_like(v) if g is None else g)
                for a, v, g in zip(self.graph_attentions, values, grads)]


def _values(attention):
    """The tensor autograd sees: a stage layer's blocks, or the attention itself."""
    return attention.blocks if isinstance(attention, StageLayer) else attention


def _like(attention, values):
    return attention.like(values) if isinstance(attention, StageLayer) else values


def _embeds(module: nn.Module) -> bool:
    """A convolution that turns an image into something else (other channels, or a stride):
    a patch embedding or stem. A 3->3, stride-1 convolution (a learnt colour transform in front
    of the model) keeps the image an image and is not one."""
    return isinstance(module, nn.Conv2d) and (module.out_channels != module.in_channels
                                              or any(s > 1 for s in module.stride))


def checked_grid_layout(model, input_size, num_tokens: int, grid) -> TokenLayout:
    """The layout of a grid the user passed (extra tokens first), checked against what the model
    shows: a grid other than its patch embedding's, or one that leaves more extra tokens before
    the patches than any known ViT has, would put the map on the wrong tokens, silently."""
    from .adapters.base import MAX_PREFIX_TOKENS, patch_conv

    h, w = _grid(grid)
    conv = patch_conv(model)
    if conv is not None and input_size is not None:
        own = (input_size[0] // conv.stride[0], input_size[1] // conv.stride[1])
        if own != (h, w):
            raise VitxError(f"the grid you passed ({h}x{w}) is not the model's patch grid: its patch embedding cuts "
                            f"the {input_size[0]}x{input_size[1]} input into {own[0]}x{own[1]} patches; leave out "
                            "layout= / --grid (vitx reads it), or pass that grid")
    layout = infer_layout(num_tokens, (h, w))
    if layout.num_prefix > MAX_PREFIX_TOKENS:
        raise VitxError(f"the grid you passed ({h}x{w}) leaves {layout.num_prefix} of the {num_tokens} tokens before "
                        f"the patches; known ViTs have at most {MAX_PREFIX_TOKENS} extra tokens (class, distillation, "
                        "registers): pass the grid of the patch tokens")
    return layout


def _grid(value):
    """(h, w) from a pair or an 'HxW' string."""
    try:
        h, w = (int(v) for v in (value.lower().split("x") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        raise VitxError(f"a grid is (h, w) or 'HxW', got {value!r}") from None
    if h < 1 or w < 1:
        raise VitxError(f"a grid needs positive sides, got {h}x{w}")
    return h, w


class _Shape:
    """A stand-in with a tensor's shape, for `_check` on attention that is never materialised."""

    def __init__(self, shape):
        self.shape = shape

    def dim(self):
        return len(self.shape)


def record_attention(model: nn.Module, adapter=None, layout=None) -> AttentionRecorder:
    """Record the attention of `model` inside a `with` block (the library's raw access).

    >>> with record_attention(model) as rec:
    ...     logits = model(x)
    >>> rec.attentions[-1].shape, rec.layout.grid
    """
    return AttentionRecorder(model, adapter=adapter, layout=layout)
