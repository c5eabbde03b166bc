"""Tiny MNIST data roots in the official IDX format (LeCun's layout, torchvision's folder),
written by the tests themselves so that they run where the real files are not."""
import struct
from pathlib import Path

import numpy as np

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_images(images: np.ndarray) -> bytes:
    """The IDX3 format of LeCun's files: magic 0x803, count, rows, columns, then uint8 pixels."""
    return struct.pack(">IIII", 0x803, *images.shape) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes()


def synthetic_digits(count: int, seed: int = 0):
    """Learnable stand-ins for digits: class k is a bright 6x6 square at one of ten places,
    over faint noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count)
    images = rng.integers(0, 40, (count, 28, 28))
    for image, label in zip(images, labels):
        row, column = 3 + 12 * (label // 5), 2 + 5 * (label % 5)
        image[row:row + 6, column:column + 6] = 255
    return images, labels


def write_mnist(root: Path, train_count=320, test_count=128, skip=()) -> Path:
    """A torchvision root with the four MNIST files (uncompressed, official format) of
    synthetic digits, leaving out the files named in `skip`."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", train_count, 0), ("t10k", test_count, 1)):
        images, labels = synthetic_digits(count, seed)
        for name, data in ((f"{prefix}-images-idx3-ubyte", idx_images(images)),
                           (f"{prefix}-labels-idx1-ubyte", idx_labels(labels))):
            if name not in skip:
                (raw / name).write_bytes(data)
    return root
