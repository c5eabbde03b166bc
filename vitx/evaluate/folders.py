"""Labelled image folders: one sub-folder per class, labelled by the folder's *name*.

torchvision's ImageFolder numbers the classes in sorted folder order, so folders `9/ 1/ 2/`
or `Ankle boot/ Trouser/` get labels 0, 1, 2 whatever the model calls them, and correct
predictions score 0. Here a folder named by an integer is that class index, any other name
is the model's class name (case and punctuation ignored: `T-shirt_top` is `T-shirt/top`),
and a folder that matches no class is an error naming it. Images are read with vitx's own
reader (EXIF rotation, 16-bit, palette...); an unreadable one is skipped with a warning
naming it, not fatal to a long evaluation.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import VitxError, suggest
from ..imaging import IMAGE_SUFFIXES, read_image


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def class_index(folder: str, class_names: Optional[Sequence[str]], num_classes: int) -> int:
    """The class a folder name stands for (see the module docstring)."""
    if folder.strip().isdigit():
        index = int(folder)
        if index >= num_classes:
            raise VitxError(f"class folder {folder!r}: the model has {num_classes} classes (0..{num_classes - 1})")
        return index
    names = list(class_names or [])
    exact = [i for i, name in enumerate(names) if name.lower() == folder.lower()]
    loose = [i for i, name in enumerate(names) if _key(name) == _key(folder)]
    matches = exact or loose
    if len(set(matches)) == 1:
        return matches[0]
    if not names:
        raise VitxError(f"class folder {folder!r} is not a class index, and the model has no class names: "
                        f"name the folders 0..{num_classes - 1}")
    if matches:
        raise VitxError(f"class folder {folder!r} matches several classes: {', '.join(names[i] for i in matches)}")
    examples = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    raise VitxError(f"class folder {folder!r} matches no class of the model (a class index 0..{num_classes - 1} "
                    f"or a class name such as {examples}).{suggest(folder, names)}")


def class_folders(root) -> List[Path]:
    root = Path(root)
    if not root.is_dir():
        raise VitxError(f"--images {root}: not a folder" if root.exists() else f"--images {root}: no such folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise VitxError(f"--images {root} has no class sub-folders (one folder of images per class, named by "
                        "class index or class name)")
    return folders


def image_files(folder: Path) -> List[Path]:
    """Image files anywhere below `folder` (nested folders too), sorted, hidden ones left out."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


class LabelledFolder:
    """(path, label) pairs of a class-folder tree; `dataset[i]` -> (model input, label)."""

    def __init__(self, root, transform, class_names: Optional[Sequence[str]], num_classes: int):
        self.transform = transform
        self.samples: List[Tuple[Path, int]] = []
        self.labels: Dict[str, int] = {}
        for folder in class_folders(root):
            label = class_index(folder.name, class_names, num_classes)
            self.labels[folder.name] = label
            self.samples += [(path, label) for path in image_files(folder)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return self.transform(read_image(path)), label


def model_classes(model, config: dict):
    """(number of classes, class names or None) of `model`, from one forward pass on a blank
    input of its data config's size (a model does not always say how many classes it has)."""
    from ..attribution.targets import as_logits
    from ..capture.model_state import evaluation_mode
    from ..models import class_names, model_device

    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    blank = torch.zeros(1, *config["input_size"], device=model_device(model), dtype=dtype)
    with evaluation_mode(model), torch.no_grad():
        count = as_logits(model(blank)).shape[-1]
    return count, class_names(model, count)
