"""Turn what a user has (file paths, PIL images, arrays, a tensor batch) into a model batch.

File and PIL inputs are preprocessed with the model's own data config (timm's
`create_transform`), and the geometric part of that transform (resize, crop) also gives the
"view": the picture the model actually saw, on which overlays are drawn.
"""
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from .errors import VitxError
from .imaging import read_image


def split_transform(config: dict):
    """(geometric part, tensor part) of timm's eval transform for `config`."""
    from timm.data import create_transform
    from torchvision import transforms

    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    transform = create_transform(**{k: config[k] for k in keys if k in config})
    steps = list(transform.transforms)
    cut = next(i for i, t in enumerate(steps) if "ToTensor" in type(t).__name__)
    return transforms.Compose(steps[:cut]), transforms.Compose(steps[cut:])


def image_transform(config: dict):
    """PIL image -> (model input tensor, view): the model's eval transform, after converting
    to the channel count it expects; the view is the resized / cropped picture it sees."""
    geometric, to_tensor = split_transform(config)
    mode = "L" if config["input_size"][0] == 1 else "RGB"

    def transform(image: Image.Image):
        view = geometric(image.convert(mode))
        return to_tensor(view), view

    return transform


def _to_pil(item) -> Tuple[Image.Image, Optional[str]]:
    if isinstance(item, (str, Path)):
        return read_image(item), str(item)
    if isinstance(item, Image.Image):
        from .imaging import to_rgb

        return to_rgb(item), None
    if isinstance(item, np.ndarray):
        array = item if item.dtype == np.uint8 else np.clip(item * 255, 0, 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB"), None
    raise VitxError(f"cannot use {type(item).__name__} as an image: pass paths, PIL images, arrays or a tensor")


def denormalise(batch: torch.Tensor, config: dict) -> List[np.ndarray]:
    """Preprocessed (B, C, H, W) tensor -> uint8 RGB views, for overlays."""
    mean = torch.tensor(config["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(config["std"]).view(1, -1, 1, 1)
    pixels = (batch.detach().float().cpu() * std + mean).nan_to_num(0.0).clamp(0, 1)
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return [np.uint8(p.permute(1, 2, 0).numpy()[..., :3] * 255) for p in pixels]


def prepare_images(images, config: dict):
    """-> (batch tensor on CPU, uint8 RGB views, source names or None)."""
    if torch.is_tensor(images):
        batch = images.unsqueeze(0) if images.dim() == 3 else images
        if batch.dim() != 4:
            raise VitxError(f"an image tensor must be (B, C, H, W) or (C, H, W), got shape {tuple(images.shape)}")
        channels = config["input_size"][0]
        if batch.shape[1] != channels:
            raise VitxError(f"the model expects {channels}-channel images, the tensor has {batch.shape[1]} channels")
        return batch, denormalise(batch, config), None
    if isinstance(images, (str, Path, Image.Image, np.ndarray)):
        images = [images]
    if not isinstance(images, Sequence) or len(images) == 0:
        raise VitxError("no images given")
    transform = image_transform(config)
    tensors, views, names = [], [], []
    for item in images:
        pil, name = _to_pil(item)
        tensor, view = transform(pil)
        tensors.append(tensor)
        views.append(np.asarray(view.convert("RGB")))
        names.append(name)
    return torch.stack(tensors), views, names


def fixed_input_size(model) -> Optional[Tuple[int, int]]:
    """(H, W) a model insists on, or None when it takes other sizes (timm with
    dynamic_img_size, the reference ViT, generic models: their own forward decides)."""
    embed = getattr(model, "patch_embed", None)
    if embed is not None and getattr(embed, "strict_img_size", False) and getattr(embed, "img_size", None):
        return tuple(embed.img_size)
    from torchvision.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        return (model.image_size, model.image_size)
    return None


def to_model(pixels: torch.Tensor, model) -> torch.Tensor:
    """A prepared batch on the model's device and in its floating dtype (a float16 or
    bfloat16 model given file paths gets float16/bfloat16 pixels), after checking the size
    against what the model accepts and warning about NaN pixels, which make every map and
    probability NaN."""
    parameter = next(model.parameters(), None)
    size = fixed_input_size(model)
    if size is not None and tuple(pixels.shape[-2:]) != size:
        raise VitxError(
            f"the model takes {size[0]}x{size[1]} images, the tensor is {pixels.shape[-2]}x{pixels.shape[-1]}: resize "
            "it, or pass file paths or PIL images (vitx preprocesses those with the model's own data config)")
    if pixels.is_floating_point() and torch.isnan(pixels).any():
        warnings.warn("the input images contain NaN values: the model's outputs and the maps will be NaN", stacklevel=3)
    if parameter is None:
        return pixels
    dtype = parameter.dtype if parameter.is_floating_point() and pixels.is_floating_point() else pixels.dtype
    return pixels.to(device=parameter.device, dtype=dtype)


def model_inputs(model: "torch.nn.Module", images, adapter=None):
    """(adapter, pixels on the model's device, views, sources): `images` preprocessed with the
    data config of the adapter that recognises `model`."""
    from .registry import find_adapter

    adapter = adapter or find_adapter(model)
    pixels, views, sources = prepare_images(images, adapter.data_config(model))
    return adapter, to_model(pixels, model), views, sources
