"""Which files a torchvision dataset needs under a data root, which of them are missing,
and unpacking the official archives found there, without a network.

torchvision's own check only answers "found or not" and, with `download=True`, reaches for
the network as soon as an archive's checksum differs; here the official archives already in
the root are verified and unpacked locally, and what is still missing is named file by
file, so `--data-dir` pointing at the wrong folder says exactly what it lacks.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import List

from .errors import VitxError


@dataclass(frozen=True)
class NeededFile:
    """One file the dataset reads (`path`, relative to the root) and the official archive
    it comes from (`archive`, relative to the root, with its MD5)."""

    path: str
    archive: str
    md5: str


def needed_files(dataset_class) -> List[NeededFile]:
    """The files of an MNIST-style (IDX files, each gzipped) or CIFAR-style (one tarball)
    torchvision dataset class, both splits; empty for a class of another layout."""
    if hasattr(dataset_class, "resources"):  # MNIST, FashionMNIST: ROOT/<Class>/raw/<name>(.gz)
        raw = f"{dataset_class.__name__}/raw"
        return [NeededFile(f"{raw}/{Path(archive).stem}", f"{raw}/{Path(archive).name}", md5)
                for archive, md5 in dataset_class.resources]
    if hasattr(dataset_class, "base_folder") and hasattr(dataset_class, "tgz_md5"):  # CIFAR-10
        return [NeededFile(f"{dataset_class.base_folder}/{name}", dataset_class.filename, dataset_class.tgz_md5)
                for name, _ in dataset_class.train_list + dataset_class.test_list]
    return []


def missing_files(dataset_class, root) -> List[str]:
    """Needed files present neither as themselves nor as their archive under `root`: 'path(.gz)'
    for a gzipped IDX file, 'folder/ (or archive)' for the files of one tarball."""
    root = Path(root)
    missing = []
    for need in needed_files(dataset_class):
        if (root / need.path).is_file() or (root / need.archive).is_file():
            continue
        gzipped = need.archive == need.path + ".gz"
        missing.append(f"{need.path}(.gz)" if gzipped else f"{Path(need.path).parent}/ (or {need.archive})")
    return list(dict.fromkeys(missing))  # CIFAR-10's files share one archive


def unpack_archives(dataset_class, root) -> int:
    """Verify (MD5) and unpack the official archives under `root` whose files are not there
    yet; returns how many were unpacked. A damaged archive is an error
    naming it: torchvision would otherwise try to download it again."""
    from torchvision.datasets.utils import check_integrity, extract_archive

    root = Path(root)
    unpacked = 0
    for need in needed_files(dataset_class):
        archive = root / need.archive
        if (root / need.path).is_file() or not archive.is_file():
            continue
        if not check_integrity(str(archive), need.md5):
            raise VitxError(f"{archive}: MD5 differs from the official file's ({need.md5}); it is damaged or "
                            "not the official archive")
        extract_archive(str(archive), str(archive.parent))
        unpacked += 1
    return unpacked
