"""`nn.Sequential(preprocessing..., vit)`: a ViT with its own input normalisation in front.

Such a wrapper is explained as a whole (its forward is what the user runs), with the inner
ViT's adapter for attention and layout, and a data config that leaves normalisation to the
wrapper: feeding it normalised pixels would normalise them twice.
"""
from typing import Optional, Tuple

from torch import nn

from .base import Adapter


def _normalises(module: nn.Module) -> bool:
    return type(module).__name__ == "Normalize" or (hasattr(module, "mean") and hasattr(module, "std"))


def split_preprocessing(model: nn.Module) -> Optional[Tuple[list, nn.Module]]:
    """(preprocessing modules, inner model) for Sequential(parameter-free modules..., model)."""
    if not isinstance(model, nn.Sequential) or len(model) < 2:
        return None
    *front, inner = list(model)
    if any(next(m.parameters(), None) is not None for m in front):
        return None
    return front, inner


class PreprocessingWrapperAdapter(Adapter):
    name = "preprocessing_wrapper"
    priority = 1000

    def matches(self, model):
        return split_preprocessing(model) is not None

    @staticmethod
    def _inner(model):
        from ...registry import find_adapter

        front, inner = split_preprocessing(model)
        return front, inner, find_adapter(inner)

    def data_config(self, model):
        front, inner, adapter = self._inner(model)
        config = dict(adapter.preprocessing(inner))
        if any(_normalises(m) for m in front):
            channels = config["input_size"][0]
            config["mean"], config["std"] = (0.0,) * channels, (1.0,) * channels
        return config


def _delegate(name: str):
    """Adapter method `name` answered by the inner model's adapter, for the inner model."""
    def method(self, model, *args, **kwargs):
        _, inner, adapter = self._inner(model)
        return getattr(adapter, name)(inner, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"The inner model's `{name}` (see Adapter.{name})."
    return method


# Every question the core asks an adapter about a model, except whether it matches and how to
# preprocess (above), goes to the inner model's adapter: none can be forgotten by hand.
for _name in ("attach", "attach_fused", "can_fuse", "refuse", "attention_refusal", "layout", "head_token",
              "token_sites", "mid_sites", "head", "output_kind", "encode_text"):
    setattr(PreprocessingWrapperAdapter, _name, _delegate(_name))
