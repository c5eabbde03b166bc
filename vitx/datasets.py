"""CIFAR-10, MNIST and Fashion-MNIST through torchvision, found wherever they already are.

Order: the data folder (torchvision layout); for Fashion-MNIST, Debian's
`dataset-fashion-mnist` IDX files, unpacked into the data folder; a download when the
network allows (last, so an offline machine never waits on a dataset host).
"""
import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

from .errors import VitxError
from .files import atomic_write

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DATA_DIR = Path.home() / ".cache" / "vitx" / "data"


@dataclass(frozen=True)
class DatasetInfo:
    torchvision_class: str  # in torchvision.datasets (imported only when a split is loaded)
    channels: int
    size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    classes: Tuple[str, ...]


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DATASETS = {
    "fashion_mnist": DatasetInfo("FashionMNIST", 1, 28, (0.2860,), (0.3530,), FASHION_CLASSES),
    "mnist": DatasetInfo("MNIST", 1, 28, (0.1307,), (0.3081,), tuple(str(i) for i in range(10))),
    "cifar10": DatasetInfo("CIFAR10", 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")),
}
DATASET_NAMES = tuple(DATASETS)  # the one list every --dataset option offers


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise VitxError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
    return DATASETS[name]


def transforms(name: str, train: bool):
    import torch
    from torchvision.transforms import v2

    info = dataset_info(name)
    steps = [v2.ToImage()]
    if train:
        if name == "cifar10":
            steps += [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
        elif name == "fashion_mnist":
            steps += [v2.RandomCrop(28, padding=2), v2.RandomHorizontalFlip()]
        else:
            steps += [v2.RandomAffine(degrees=8, translate=(0.08, 0.08))]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)]
    return v2.Compose(steps)


def _gunzip(packed: Path, target) -> None:
    with gzip.open(packed, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)


def _unpack_debian_fashion(data_dir: Path) -> bool:
    if not DEBIAN_FASHION.is_dir():
        return False
    raw = data_dir / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for packed in DEBIAN_FASHION.glob("*.gz"):
        target = raw / packed.stem
        if not target.exists():
            atomic_write(target, lambda tmp, packed=packed: _gunzip(packed, tmp))
    return True


def load_split(name: str, train: bool, data_dir=None, download: bool = True, augment: bool = None):
    """A torchvision dataset for one split, with the right transforms. Looks in `data_dir`
    (unpacking official archives found there), then Debian's Fashion-MNIST, then downloads;
    when all fail, one error naming the files `data_dir` lacks."""
    from torchvision import datasets

    from .dataset_files import missing_files, unpack_archives

    info = dataset_info(name)
    dataset_class = getattr(datasets, info.torchvision_class)
    data_dir = Path(data_dir or DEFAULT_DATA_DIR)
    transform = transforms(name, train if augment is None else augment)
    attempts: List[str] = []
    for how in ("local", "archives", "debian", "download"):
        if how == "download" and not download:
            continue
        if how == "archives" and not (data_dir.is_dir() and unpack_archives(dataset_class, data_dir)):
            continue
        if how == "debian" and not (name == "fashion_mnist" and _unpack_debian_fashion(data_dir)):
            continue
        try:
            return dataset_class(str(data_dir), train=train, transform=transform, download=how == "download")
        except Exception as exc:  # not found, or no network
            attempts.append(f"{how}: {str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__}")
    missing = missing_files(dataset_class, data_dir)
    lacks = f"it lacks {', '.join(missing)}" if missing else "its files are there but unreadable"
    tried = "" if not download else f" and could not be downloaded ({attempts[-1]})"
    hint = " or `apt-get install dataset-fashion-mnist`" if name == "fashion_mnist" else ""
    raise VitxError(
        f"{name} not found in {data_dir}: {lacks}{tried}. Put the torchvision files (or their official "
        f"archives) under --data-dir, run where the network is reachable{hint}"
    )
