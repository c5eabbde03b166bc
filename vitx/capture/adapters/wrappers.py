"""`nn.Sequential(preprocessing..., vit)`: a ViT with its own input normalisation in front.

Such a wrapper is explained as a whole (its forward is what the user runs), with the inner
ViT's adapter for attention and layout, and a data config that leaves normalisation to the
wrapper: feeding it normalised pixels would normalise them twice.
"""
from contextlib import contextmanager
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

    @contextmanager
    def attach(self, model, record):
        _, inner, adapter = self._inner(model)
        with adapter.attach(inner, record):
            yield

    def layout(self, model, input_size, num_tokens):
        _, inner, adapter = self._inner(model)
        return adapter.layout(inner, input_size, num_tokens)

    def data_config(self, model):
        front, inner, adapter = self._inner(model)
        config = dict(adapter.data_config(inner))
        if any(_normalises(m) for m in front):
            channels = config["input_size"][0]
            config["mean"], config["std"] = (0.0,) * channels, (1.0,) * channels
        return config
