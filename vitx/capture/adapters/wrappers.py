"""`nn.Sequential(preprocessing..., vit)`: a ViT with its own input normalisation in front.

Such a wrapper is explained as a whole (its forward is what the user runs), with the inner
ViT's adapter for attention and layout, and a data config that leaves normalisation to the
wrapper: feeding it normalised pixels would normalise them twice.

Whether the modules in front normalise is decided from what they do, not from their names
(a class called `Normalize`, buffers called `mean`/`std`: buffers `mu`/`sigma` once slipped
through and the image was normalised twice, logits off by 0.68): they are run on known
images. A per-channel scale and shift is a normaliser (vitx then feeds pixels in [0, 1]); the
identity leaves normalisation to vitx; anything else (a resize, a non-linear map) is refused
with the way to declare what the wrapper expects.
"""
from typing import Optional, Tuple

import torch
from torch import nn

from ...errors import VitxError
from .base import Adapter

IDENTITY, AFFINE = "identity", "affine"


def front_effect(front, input_size, device) -> Optional[str]:
    """What the parameter-free modules `front` do to images of `input_size` (C, H, W):
    IDENTITY, AFFINE (each channel scaled and shifted by constants: a normaliser), or
    None (anything else, or they fail on such an image)."""
    channels, height, width = input_size
    generator = torch.Generator().manual_seed(0)
    # wider than [0, 1], so a clamp is not mistaken for the identity on normalised pixels
    probe = (3 * torch.randn(2, channels, height, width, generator=generator)).to(device)
    ends = torch.stack([torch.zeros(channels, height, width), torch.ones(channels, height, width)]).to(device)

    def run(x):
        for module in front:
            x = module(x)
        return x

    try:
        with torch.no_grad():
            seen, (zero, one) = run(probe.clone()), run(ends.clone())
    except Exception:  # a front that cannot take an image of the model's input size: not ours to guess
        return None
    if not torch.is_tensor(seen) or seen.shape != probe.shape:
        return None
    if torch.allclose(seen, probe, rtol=1e-5, atol=1e-6):
        return IDENTITY
    scale, shift = one - zero, zero
    per_channel = all(torch.allclose(t, t.flatten(1).mean(1).view(-1, 1, 1), rtol=1e-5, atol=1e-6)
                      for t in (scale, shift))
    if per_channel and torch.allclose(seen, probe * scale + shift, rtol=1e-4, atol=1e-5):
        return AFFINE
    return None


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
        device = next((t.device for t in inner.parameters()), torch.device("cpu"))
        effect = front_effect(front, tuple(config["input_size"]), device)
        if effect is None:
            names = ", ".join(type(m).__name__ for m in front)
            raise VitxError(
                f"cannot tell what the modules in front of the ViT ({names}) do to an image: they are neither a "
                "per-channel normalisation nor the identity. Declare what the whole model expects: "
                "vitx.remember_preprocessing(model, {'input_size': (3, H, W), 'mean': (...), 'std': (...)}), "
                "or pass preprocessed tensors")
        if effect == AFFINE:  # the wrapper normalises: vitx feeds pixels in [0, 1]
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
              "token_sites", "mid_sites", "head", "output_kind", "encode_text", "token_note"):
    setattr(PreprocessingWrapperAdapter, _name, _delegate(_name))
