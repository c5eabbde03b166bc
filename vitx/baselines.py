"""What "removed" means: one definition of a baseline image, shared by methods and metrics.

Integrated gradients starts its path there, occlusion and RISE fill masked pixels with it,
and the perturbation metrics replace removed patches with it. A benchmark that scores a
method with one baseline and evaluates it with another measures the mismatch, not the
method, so every one of them resolves `baseline=` here, in the model's input space (after
normalisation):

- ``"mean"`` (default): each image's own mean colour, per channel. Removing a patch leaves
  no edge and no colour the image did not have (the protocol of Chefer et al. and of most
  ViT faithfulness tables);
- ``"dataset_mean"``: the normalisation mean, 0 after normalisation (captum's default for
  integrated gradients);
- ``"black"``: zero intensity, (0 - mean) / std;
- ``"blur"``: the image under a strong Gaussian blur (shapes go, colours stay);
- ``"noise"``: uniform noise in [0, 1] intensity, seeded and the same for every image (so a
  batch gives what each image gives alone);
- a tensor, (C, H, W) or one image per input (N, C, H, W), already normalised;
- a callable ``pixels (B, C, H, W) -> baseline of the same shape``.
"""
from typing import Callable, Optional, Union

import torch

from .errors import VitxError

BASELINES = ("mean", "dataset_mean", "black", "blur", "noise")
DEFAULT_BASELINE = "mean"
NOISE_SEED = 0

Baseline = Union[str, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


def baseline(value) -> Baseline:
    """Parse a `baseline=` option (the Option type of every method that takes one): a name,
    a tensor (NumPy arrays become tensors) or a callable; anything else is a one-line error."""
    import numpy as np

    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if torch.is_tensor(value) or callable(value):
        return value
    if isinstance(value, str) and value in BASELINES:
        return value
    raise ValueError(f"unknown baseline {value!r}")


baseline.__name__ = f"baseline ({', '.join(BASELINES)}, a tensor or a callable)"


def baseline_images(pixels: torch.Tensor, spec: Baseline, config: dict, rows: Optional[slice] = None) -> torch.Tensor:
    """The baseline for a preprocessed batch `pixels` (B, C, H, W), in the same space.

    `config`: the model's data config (mean, std: where black is). `rows`: which of the
    caller's images this batch holds, for a per-image (N, C, H, W) tensor baseline when the
    images are explained in chunks.
    """
    if isinstance(spec, str):
        return _named(pixels, spec, config)
    if callable(spec) and not torch.is_tensor(spec):
        made = spec(pixels)
        if not torch.is_tensor(made) or made.shape != pixels.shape:
            shape = tuple(made.shape) if torch.is_tensor(made) else type(made).__name__
            raise VitxError(f"the baseline callable returned {shape}; it must return a tensor shaped like its "
                            f"input {tuple(pixels.shape)}")
        return _finite(made.to(device=pixels.device, dtype=pixels.dtype), "the baseline callable's output")
    return _tensor(pixels, spec, rows)


def check_baseline(spec: Baseline, images: torch.Size) -> None:
    """Before any forward: a tensor baseline fits the preprocessed images `images` (N, C, H, W)
    (one for all, or exactly one per image: a longer one was once cut to the first N) and is
    finite (a NaN baseline once gave NaN maps, silently). Names and callables pass."""
    if not torch.is_tensor(spec):
        return
    given = tuple(spec.shape)
    fits = spec.dim() in (3, 4) and tuple(spec.shape[-3:]) == tuple(images[1:])
    if not fits:
        raise VitxError(f"a baseline tensor must be (C, H, W) or (N, C, H, W) like the preprocessed images "
                        f"{tuple(images[1:])}, got {given}")
    if spec.dim() == 4 and spec.shape[0] not in (1, images[0]):
        raise VitxError(f"the baseline tensor {given} holds {spec.shape[0]} images for {images[0]}: give one per "
                        "image, or one (C, H, W) for all")
    _finite(spec, f"the baseline tensor {given}")


def _finite(tensor: torch.Tensor, what: str) -> torch.Tensor:
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise VitxError(f"{what} holds NaN or infinite values")
    return tensor


def _named(pixels, name, config):
    if name == "mean":
        return pixels.mean(dim=(-2, -1), keepdim=True).expand_as(pixels)
    if name == "dataset_mean":
        return torch.zeros_like(pixels)
    mean = torch.tensor(config["mean"], device=pixels.device, dtype=pixels.dtype).view(1, -1, 1, 1)
    std = torch.tensor(config["std"], device=pixels.device, dtype=pixels.dtype).view(1, -1, 1, 1)
    if name == "black":
        return ((0.0 - mean) / std).expand_as(pixels)
    if name == "noise":
        generator = torch.Generator().manual_seed(NOISE_SEED)
        noise = torch.rand(pixels.shape[1:], generator=generator).to(device=pixels.device, dtype=pixels.dtype)
        return ((noise[None] - mean) / std).expand_as(pixels)
    if name == "blur":
        from torchvision.transforms.v2.functional import gaussian_blur

        size = max(3, (min(pixels.shape[-2:]) // 4) | 1)
        return gaussian_blur(pixels, kernel_size=[size, size], sigma=size / 3)
    raise VitxError(f"unknown baseline {name!r}; use one of {', '.join(BASELINES)}, a tensor or a callable")


def _tensor(pixels, tensor, rows):
    given = tuple(tensor.shape)
    tensor = _finite(tensor.to(device=pixels.device, dtype=pixels.dtype), f"the baseline tensor {given}")
    if tensor.dim() == 3:
        tensor = tensor[None]
    if tensor.dim() != 4 or tuple(tensor.shape[1:]) != tuple(pixels.shape[1:]):
        raise VitxError(f"a baseline tensor must be (C, H, W) or (N, C, H, W) like the preprocessed images "
                        f"{tuple(pixels.shape[1:])}, got {given}")
    if tensor.shape[0] == 1:
        return tensor.expand_as(pixels)
    if rows is not None and rows.stop <= tensor.shape[0]:
        tensor = tensor[rows]
    if tensor.shape[0] != pixels.shape[0]:
        raise VitxError(f"the baseline tensor holds {tensor.shape[0]} images for {pixels.shape[0]}: give one per "
                        "image, or one (C, H, W) for all")
    return tensor
