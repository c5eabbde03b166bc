"""Hooks that make the reference models part of vitx: an adapter (token layout with the
dist token, 1-channel 28 px preprocessing), named bundled models, loading by path, and the
`train` / `study` commands."""
from pathlib import Path

import vitx
from vitx.capture.adapters import SDPAAdapter
from vitx.capture.layout import TokenLayout

from .vit import ViT

WEIGHTS = Path(__file__).parent / "weights"
BUNDLED = {
    "fashion_vit": "reference ViT trained from scratch on Fashion-MNIST (bundled)",
    "fashion_deit": "reference DeiT (distillation token, CNN teacher) on Fashion-MNIST (bundled)",
    "mnist_vit": "reference ViT trained from scratch on MNIST (bundled)",
    "mnist_deit": "reference DeiT (distillation token, CNN teacher) on MNIST (bundled)",
}


class ReferenceViTAdapter(SDPAAdapter):
    """Records through the generic SDPA capture; knows the tokens and the preprocessing."""

    name = "reference_vit"
    priority = 200

    def matches(self, model):
        return isinstance(model, ViT)

    def token_sites(self, model):
        return list(model.blocks)

    def layout(self, model, input_size, num_tokens):
        patch = model.config.patch_size
        grid = (input_size[0] // patch, input_size[1] // patch) if input_size else model.grid
        prefix = {"cls": 0, "dist": 1} if model.dist_token is not None else {"cls": 0}
        return TokenLayout(prefix=prefix, num_prefix=len(prefix), grid=grid, default_token="cls")

    def data_config(self, model):
        c = model.config
        return {"input_size": (c.in_chans, c.img_size, c.img_size), "interpolation": "bilinear",
                "mean": tuple(c.mean), "std": tuple(c.std), "crop_pct": 1.0, "crop_mode": "center"}


def _bundled_loader(name):
    def load(checkpoint=None, pretrained=None, **kwargs):
        from .checkpoint import load_model_file

        return load_model_file(checkpoint or WEIGHTS / f"{name}.safetensors")
    return load


@vitx.hookimpl
def vitx_register_adapters(register):
    register(ReferenceViTAdapter())


@vitx.hookimpl
def vitx_register_models(register):
    for name, description in BUNDLED.items():
        register(name, _bundled_loader(name), description=description, family="reference")


@vitx.hookimpl
def vitx_load_model_file(path):
    if Path(path).is_dir():  # a training run folder (vitx train --out RUN_DIR)
        path = Path(path) / "model.safetensors"
        if not path.with_suffix(".json").is_file():
            return None
    if Path(path).with_suffix(".json").is_file():
        from .checkpoint import load_model_file

        return load_model_file(path)
    return None


@vitx.hookimpl
def vitx_register_commands():
    from .cli import study_command, train_command

    return [train_command, study_command]
