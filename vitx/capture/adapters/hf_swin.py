"""Hugging Face Swin and SwinV2: window attention as block-diagonal layers per stage.

Each `SwinLayer` / `Swinv2Layer` pads its grid to whole windows, rolls the padded grid by
-shift and partitions it (pad first, then roll: `window_index(pad_first=True)`). Swin's
attention goes through transformers' AttentionInterface, so the adapter routes it like every
other transformers model (vitx.capture.adapters.transformers) with a per-module record that
writes the window layer; SwinV2 computes its cosine attention itself, so its probabilities are
taken at the dropout after the softmax. The grid and the window come from the layer itself.
"""
from contextlib import ExitStack, contextmanager

from .timm_swin import WHY, WindowedPyramidAdapter, record_windows
from .transformers import TransformersAdapter, _active, hf_model

MODEL_TYPES = {"swin": "Swin (Hugging Face)", "swinv2": "SwinV2 (Hugging Face)"}


def _pair(value):
    return (int(value), int(value)) if not isinstance(value, (tuple, list)) else tuple(int(v) for v in value)


def swin_layers(model):
    """The window-attention layers of the vision tower, in forward order."""
    return [m for m in hf_model(model).modules()
            if hasattr(m, "layernorm_before") and hasattr(m, "shift_size") and hasattr(m, "attention")]


class HFSwinAdapter(WindowedPyramidAdapter):
    name = "transformers_swin"
    priority = 95  # before the generic transformers adapter

    def matches(self, model):
        inner = hf_model(model)
        return inner is not None and getattr(inner.config, "model_type", None) in MODEL_TYPES

    def family(self, model):
        return MODEL_TYPES[hf_model(model).config.model_type], WHY

    @contextmanager
    def attach(self, model, record):
        with ExitStack() as stack:
            chain = stack.enter_context(self.chained(model))
            # Swin's attention: the transformers routing, one record per attention module
            stack.enter_context(TransformersAdapter.attach(self, model, record))
            for layer in swin_layers(model):
                stack.enter_context(_hf_layer(layer, chain, record))
            yield

    data_config = TransformersAdapter.data_config
    output_kind = TransformersAdapter.output_kind


@contextmanager
def _hf_layer(layer, chain, record):
    seen = {}

    def grab(module, args, kwargs):
        dims = args[1] if len(args) > 1 else kwargs["input_dimensions"]
        grid = tuple(int(d) for d in dims)
        seen.update(batch=args[0].shape[0], grid=grid, entry=chain.enter(grid))

    def windows(probs):
        heads = probs.shape[1]
        return record_windows(record, probs, seen["batch"], heads, seen["grid"], _pair(layer.window_size),
                              _pair(layer.shift_size), seen["entry"], pad_first=True)

    handles = [layer.register_forward_pre_hook(grab, with_kwargs=True)]
    self_attention = getattr(layer.attention, "self", None)
    if self_attention is not None and hasattr(self_attention, "dropout"):  # SwinV2: its own softmax
        handles.append(self_attention.dropout.register_forward_hook(lambda mod, inp, out: windows(out)))
    else:
        _active[layer.attention] = windows
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
