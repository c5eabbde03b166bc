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
    """(geometric part, tensor part) of timm's eval transform for `config`.

    Two keys beyond timm's, set for Hugging Face image processors: `resize_size: (h, w)`
    resizes to exactly that size before the crop (timm's squash mode can only scale both
    sides by one crop_pct), and `crop_rounding: "floor"`: the centre crop puts an odd margin's extra pixel at the bottom / right, as the processors do
    (`(size - crop) // 2`); torchvision's CenterCrop rounds the offset to the nearest even."""
    from timm.data import create_transform
    from torchvision import transforms

    config = channel_statistics(config)
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    transform = create_transform(**{k: config[k] for k in keys if k in config})
    steps = list(transform.transforms)
    if config.get("resize_size"):
        steps = [transforms.Resize(tuple(config["resize_size"]), interpolation=t.interpolation)
                 if isinstance(t, transforms.Resize) else t for t in steps]
    if config.get("crop_rounding") == "floor":
        steps = [FloorCenterCrop(t.size) if isinstance(t, transforms.CenterCrop) else t for t in steps]
    cut = next(i for i, t in enumerate(steps) if "ToTensor" in type(t).__name__)
    return transforms.Compose(steps[:cut]), transforms.Compose(steps[cut:])


def channel_statistics(config: dict) -> dict:
    """`config` with one mean / std per input channel. A 1-channel model whose config holds
    RGB statistics (timm keeps the pretrained RGB mean / std for in_chans=1, while it sums the
    RGB filters into one) gets their average, the statistics of a gray image whose three
    channels are equal; any other mismatch is refused."""
    channels = config["input_size"][0]
    mean, std = tuple(config["mean"]), tuple(config["std"])
    if len(mean) == channels and len(std) == channels:
        return config
    if channels == 1 and len(mean) == len(std) == 3:
        return {**config, "mean": (sum(mean) / 3,), "std": (sum(std) / 3,)}
    raise VitxError(f"the model takes {channels}-channel images but its data config has {len(mean)} means and "
                    f"{len(std)} standard deviations: give the model a matching pretrained_cfg / data config")


class FloorCenterCrop:
    """Centre crop of a PIL image to (h, w) with the offset rounded down (the Hugging Face
    image processors' rule), for images at least as large as the crop."""

    def __init__(self, size):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, image: Image.Image) -> Image.Image:
        from torchvision.transforms import functional

        height, width = self.size
        if image.height < height or image.width < width:
            return functional.center_crop(image, [height, width])  # padding: torchvision's rule
        top, left = (image.height - height) // 2, (image.width - width) // 2
        return image.crop((left, top, left + width, top + height))

    def __repr__(self):
        return f"FloorCenterCrop(size={self.size})"


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
        return Image.fromarray(array_to_uint8(_image_array(item))).convert("RGB"), None
    raise VitxError(f"cannot use {type(item).__name__} as an image: pass paths, PIL images, arrays or a tensor")


def _image_array(array: np.ndarray) -> np.ndarray:
    """An array laid out as a picture: (H, W), (H, W, 1) (squeezed), (H, W, 3) or (H, W, 4)."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4)):
        if min(array.shape[:2]) == 0:
            raise VitxError(f"the image array of shape {array.shape} is empty")
        return array
    hint = (": that is channels first, pass array.transpose(1, 2, 0)" if array.ndim == 3 and array.shape[0] in (1, 3, 4)
            else "")
    raise VitxError(f"cannot use an image array of shape {array.shape}: pass (H, W), (H, W, 1), (H, W, 3) or "
                    f"(H, W, 4) pixels{hint}")


def array_to_uint8(array: np.ndarray) -> np.ndarray:
    """An (H, W) / (H, W, C) image array -> uint8. uint8 is taken as is, integers must lie in
    0..255; floats are 0..1 (scaled by 255) unless a value exceeds 1, then they are 0..255
    (a float copy of a uint8 image). Anything else (negative, above 255, NaN/inf) is refused:
    guessing would give a silently wrong picture."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise VitxError(f"cannot use an image array of dtype {array.dtype}: pass uint8 (0..255) or float (0..1) pixels")
    if array.size == 0:
        raise VitxError("the image array is empty")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise VitxError("the image array holds NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 255:
        raise VitxError(f"image array values run from {low:g} to {high:g}: pass uint8 or 0..255 pixels, or floats "
                        "in 0..1 (normalise your array first, or pass a preprocessed tensor)")
    if np.issubdtype(array.dtype, np.floating) and high <= 1.0:
        array = array * 255.0
    return np.rint(array).astype(np.uint8)


def denormalise(batch: torch.Tensor, config: dict) -> List[np.ndarray]:
    """Preprocessed (B, C, H, W) tensor -> uint8 RGB views, for overlays."""
    config = channel_statistics(config)
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
        if not batch.is_floating_point():
            raise VitxError(
                f"an image tensor must hold float pixels, preprocessed as the model expects; this one is "
                f"{str(batch.dtype).replace('torch.', '')}: pass the images as file paths, PIL images or numpy "
                "arrays for vitx to preprocess, or convert and normalise the tensor yourself")
        if batch.shape[0] == 0:
            raise VitxError("no images given (the tensor's batch is empty)")
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
    _check_patch_fits(pixels, model)
    if pixels.is_floating_point() and torch.isnan(pixels).any():
        bad = [str(i) for i in range(pixels.shape[0]) if torch.isnan(pixels[i]).any()]
        listed = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
        warnings.warn(f"image {listed}: the input holds NaN values, so its outputs and map will be NaN", stacklevel=3)
    if parameter is None:
        return pixels
    dtype = parameter.dtype if parameter.is_floating_point() and pixels.is_floating_point() else pixels.dtype
    return pixels.to(device=parameter.device, dtype=dtype)


def _check_patch_fits(pixels: torch.Tensor, model) -> None:
    """A preprocessed tensor smaller than one patch would fail deep in the patch embedding."""
    from .capture.adapters.base import patch_conv

    conv = patch_conv(model)
    if conv is not None and (pixels.shape[-2] < conv.kernel_size[0] or pixels.shape[-1] < conv.kernel_size[1]):
        raise VitxError(f"the tensor's images are {pixels.shape[-2]}x{pixels.shape[-1]}, smaller than one "
                        f"{conv.kernel_size[0]}x{conv.kernel_size[1]} patch of the model: resize them, or pass file "
                        "paths or PIL images (vitx preprocesses those with the model's own data config)")


def model_inputs(model: "torch.nn.Module", images, adapter=None):
    """(adapter, pixels on the model's device, views, sources): `images` preprocessed with the
    data config of the adapter that recognises `model` (a model vitx cannot run is refused first)."""
    from .capture.model_checks import check_model
    from .registry import find_adapter

    check_model(model)
    adapter = adapter or find_adapter(model)
    pixels, views, sources = prepare_images(images, adapter.preprocessing(model))
    return adapter, to_model(pixels, model), views, sources
