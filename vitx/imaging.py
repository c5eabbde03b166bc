"""Reading images with clear errors, and drawing heatmaps and overlays with OpenCV.

OpenCV is imported when something is drawn, not with `import vitx` (a library user who only
computes maps never loads it)."""
from collections.abc import Mapping
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import VitxError, printable

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _cv2():
    import cv2

    return cv2


class _Colormaps(Mapping):
    """Colormap name -> OpenCV's code, read from OpenCV only when a map is drawn."""

    names = ("jet", "inferno", "viridis", "turbo", "magma")

    def __getitem__(self, name):
        if name not in self.names:
            raise KeyError(name)
        return getattr(_cv2(), f"COLORMAP_{name.upper()}")

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)


COLORMAPS = _Colormaps()


def read_image(path: Union[str, Path]) -> Image.Image:
    """Open any image as 8-bit RGB: grayscale, palette, RGBA (on white), 16-bit and float
    images are converted, EXIF rotation applied. Unreadable files raise a VitxError."""
    path = Path(path)
    if not path.is_file():
        raise VitxError(f"image not found: {path}" if not path.exists() else f"not a file: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        raise VitxError(f"cannot read image {path}: not an image format vitx can read") from None
    except Image.DecompressionBombError as exc:
        raise VitxError(f"cannot read image {path}: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise VitxError(f"cannot read image {path}: {exc}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB version of a PIL image of any mode."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(_deep_to_uint8(np.asarray(image), image.mode == "F"), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _deep_to_uint8(values: np.ndarray, floating: bool, rows: int = 512) -> np.ndarray:
    """16/32-bit integer or float pixels -> uint8, a block of rows at a time in float32 (a
    13000 x 13000 16-bit scan once peaked at 4.2 GB in float64 copies; now the input, the
    output and one block). Integers above 255 are taken as 16-bit (0..65535 onto 0..255);
    floats are stretched from their minimum to their maximum."""
    out = np.empty(values.shape, np.uint8)
    if floating:
        finite = values[np.isfinite(values)] if not np.isfinite(values).all() else values
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        scale, offset = 255.0 / max(high - low, 1e-12), low
    else:
        scale, offset = (1 / 257.0 if values.size and values.max() > 255 else 1.0), 0.0
    for start in range(0, values.shape[0], rows):
        block = values[start:start + rows].astype(np.float32)
        block -= offset
        block *= scale
        np.clip(block, 0, 255, out=block)
        out[start:start + rows] = block
    return out


def heatmap(relevance: np.ndarray, size, colormap: str = "jet") -> np.ndarray:
    """(h, w) relevance in [0, 1] -> (H, W, 3) uint8 RGB colour map at `size` = (H, W)."""
    cv2 = _cv2()
    if colormap not in COLORMAPS:
        raise VitxError(f"unknown colormap {colormap!r}; use one of {', '.join(COLORMAPS)}")
    up = cv2.resize(relevance.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    scaled = np.uint8(np.clip(up, 0.0, 1.0) * 255)
    return cv2.applyColorMap(scaled, COLORMAPS[colormap])[..., ::-1].copy()


def overlay(image: np.ndarray, relevance: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend the colour map of `relevance` over an (H, W, 3) uint8 RGB image."""
    cv2 = _cv2()
    heat = heatmap(relevance, image.shape[:2], colormap)
    return cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)


def panel(image: np.ndarray, relevance: np.ndarray, min_side: int = 224, colormap: str = "jet",
          title: Union[str, Sequence[str], None] = None) -> np.ndarray:
    """Input | heatmap | overlay side by side, upscaled so that small inputs stay visible,
    under a white title strip (one line per string of `title`) when one is given."""
    cv2 = _cv2()
    scale = max(1, int(np.ceil(min_side / min(image.shape[:2]))))
    if scale > 1:
        image = cv2.resize(image, (image.shape[1] * scale, image.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    heat = heatmap(relevance, image.shape[:2], colormap)
    body = np.concatenate([image, heat, overlay(image, relevance, colormap=colormap)], axis=1)
    if not title:
        return body
    return np.concatenate([title_strip([title] if isinstance(title, str) else list(title), body.shape[1]), body])




def title_strip(lines: Sequence[str], width: int, scale: float = 0.6) -> np.ndarray:
    """A white (H, width, 3) uint8 strip with `lines` of dark text, each shrunk (never below
    a readable 0.4) so that it fits the width; what still does not fit is cut with '...'."""
    cv2 = _cv2()
    line_height = int(32 * scale) + 10
    strip = np.full((line_height * len(lines) + 6, width, 3), 255, np.uint8)
    for row, text in enumerate(lines):
        size = scale
        while size > 0.4 and cv2.getTextSize(text, cv2.FONT_HERSHEY_DUPLEX, size, 1)[0][0] > width - 16:
            size -= 0.05
        while len(text) > 4 and cv2.getTextSize(text, cv2.FONT_HERSHEY_DUPLEX, size, 1)[0][0] > width - 16:
            text = text[:-4] + "..."
        baseline = 6 + line_height * row + int(22 * scale) + 4
        cv2.putText(strip, text, (8, baseline), cv2.FONT_HERSHEY_DUPLEX, size, (20, 20, 20), 1, cv2.LINE_AA)
    return strip


def png_bytes(rgb: np.ndarray, what: str = "an image") -> bytes:
    """An (H, W, 3) uint8 RGB image encoded as PNG."""
    cv2 = _cv2()
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise VitxError(f"could not encode {what} as PNG")
    return encoded.tobytes()


def save_png(path: Union[str, Path], rgb: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # encoded in memory and written by Python: cv2.imwrite crashes on a path that is not valid UTF-8
    data = png_bytes(rgb, printable(path))
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise VitxError(f"could not write {printable(path)}: {exc.strerror}") from None


def image_files(folder: Path) -> List[Path]:
    """Image files anywhere below `folder` (nested folders too), sorted, hidden ones left out."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))
