"""Ground-truth masks for localisation: a folder of images and masks, or the ImageNet
segmentation set of Guillaumin et al. (`gtsegs_ijcv.mat`), as (image, mask) pairs that
`vitx.evaluate.localisation` scores."""
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image

from ..errors import VitxError
from ..imaging import IMAGE_SUFFIXES

MASK_SUFFIXES = (".png", ".bmp", ".gif", ".tif", ".tiff")


def mask_folder(folder) -> List[Tuple[Path, np.ndarray]]:
    """A folder with `images/` and `masks/`: each image's mask is the file with the same
    stem in `masks/` (any non-zero pixel = object). Images without a mask are an error."""
    from ..imaging import read_image

    folder = Path(folder)
    images, masks = folder / "images", folder / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise VitxError(f"{folder} needs an images/ and a masks/ folder (same file stems)")
    by_stem = {p.stem: p for p in masks.iterdir() if p.suffix.lower() in MASK_SUFFIXES}
    pairs = []
    for path in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if path.stem not in by_stem:
            raise VitxError(f"no mask for {path.name} in {masks} (expected {path.stem}.png)")
        mask = np.asarray(read_image(by_stem[path.stem]).convert("L")) > 0
        if mask.shape != read_image(path).size[::-1]:
            raise VitxError(f"mask {by_stem[path.stem].name} is {mask.shape[1]}x{mask.shape[0]}, "
                            f"its image {path.name} is {read_image(path).size[0]}x{read_image(path).size[1]}")
        pairs.append((path, mask))
    if not pairs:
        raise VitxError(f"no images in {images}")
    return pairs


def gtsegs_ijcv(path, limit: Optional[int] = None) -> Iterator[Tuple[Image.Image, np.ndarray]]:
    """(image, mask) pairs of the ImageNet segmentation set `gtsegs_ijcv.mat` (Guillaumin et
    al. 2014; 4,276 images), as Chefer et al. read it.

    The file is MATLAB v7.3, i.e. HDF5 (needs `h5py`): `value/img` and `value/gt` are (n, 1)
    arrays of object references; image i is `f[f['value/img'][i, 0]]`, stored (3, W, H)
    uint8 -> transposed to (H, W, 3); its mask is `f[f[f['value/gt'][i, 0]][0, 0]]`, stored
    (W, H) -> transposed to (H, W), non-zero = object.
    """
    path = Path(path)
    if not path.is_file():
        raise VitxError(f"segmentation file not found: {path}")
    try:
        import h5py
    except ImportError:
        raise VitxError("reading gtsegs_ijcv.mat (MATLAB v7.3 = HDF5) needs h5py: pip install h5py") from None
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise VitxError(f"cannot read {path} as a MATLAB v7.3 / HDF5 file: {exc}") from None
    with handle:
        try:
            images, masks = handle["value/img"], handle["value/gt"]
        except KeyError:
            raise VitxError(f"{path} has no value/img and value/gt: not the gtsegs_ijcv.mat layout") from None
        count = images.shape[0] if limit is None else min(limit, images.shape[0])
        for index in range(count):
            image = np.array(handle[images[index, 0]]).transpose(2, 1, 0)
            mask = np.array(handle[handle[masks[index, 0]][0, 0]]).transpose(1, 0)
            yield Image.fromarray(np.ascontiguousarray(image.astype(np.uint8))), mask > 0
