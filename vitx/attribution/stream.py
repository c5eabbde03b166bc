"""Explain a whole dataset or image folder: batches stream through a DataLoader, maps are
written shard by shard as they are computed, a stopped run resumes, and torchrun ranks
share the work.

Output format (OUT/), documented in docs/howto/datasets-torchrun.md:

- `meta.json`: model, method, options, token, target, batch size, number of images and
  shards, patch grid. A run resumed into OUT must have been started with the same settings.
- `maps/shard-NNNNN.npz`: one per batch of `batch_size` images (batch NNNNN of the run),
  written to a temporary name and renamed, so a shard that exists is complete. Arrays:
  `index` (B,) int64, the image's position in the dataset / sorted folder listing;
  `maps` (B, h, w) float32 in [0, 1] (what `vitx.explain` returns); `targets` (B,) the
  explained class; `predictions` (B,) top-1 class; `probabilities` (B,) float32 of the
  top-1 class; `labels` (B,) the dataset label (-1 in an unlabelled folder).
- `index.csv` (valid UTF-8; a file name that is not UTF-8 is escaped in `source`, its bytes
  in `source_bytes` as hex): one row per image, in dataset order: index, source, label, target,
  prediction, probability, shard, row (the row of the image in its shard).

Resuming: shards that exist and whose `keys` match the images now planned for them are
skipped (a folder whose files were renamed, replaced or swapped keeps its image count, so the
count alone would hand an old image's map to a new name); any other shard is recomputed; the index is rebuilt from the shards at the end.
Under torchrun the missing shards are dealt round-robin to the ranks, each rank writes its
own shards, and rank 0 writes `index.csv` once all are there.
"""
import csv
import json
import os
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..batches import DEFAULT_BATCH_SIZE
from ..errors import VitxError, printable
from ..files import atomic_write
from ..imaging import IMAGE_SUFFIXES, image_files

SHARD = "shard-{:05d}.npz"


class ImageFiles(Dataset):
    """Every image file under a folder (recursively, sorted), preprocessed for one model.

    Items are (pixels, -1): a folder carries no labels (an ImageFolder's sub-folder names are
    only names here). Picklable, so DataLoader workers can decode in parallel.
    """

    def __init__(self, folder, config: dict):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise VitxError(f"{folder} is not a folder")
        self.files = image_files(self.folder)
        if not self.files:
            raise VitxError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {folder}")
        self.config = config
        self._transform = None

    def __len__(self):
        return len(self.files)

    def source(self, index: int) -> str:
        return str(self.files[index].relative_to(self.folder))

    def key(self, index: int) -> str:
        """What this image is: a digest of its relative name, size and modification time (a
        resumed run recomputes a shard whose images changed)."""
        import hashlib

        path = self.files[index]
        try:
            stat = path.stat()
            content = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            content = "missing"
        name = os.fsencode(self.source(index))
        return hashlib.sha1(name + b"\0" + content.encode()).hexdigest()

    def __getitem__(self, index):
        from ..imaging import read_image
        from ..inputs import image_transform

        if self._transform is None:
            self._transform = image_transform(self.config)
        return self._transform(read_image(self.files[index]))[0], -1


def _sources(dataset, name: str, indices: List[int]) -> List[str]:
    if isinstance(dataset, ImageFiles):
        return [dataset.source(i) for i in indices]
    return [f"{name}[{i}]" for i in indices]


def _keys(dataset, name: str, indices) -> List[str]:
    if isinstance(dataset, ImageFiles):
        return [dataset.key(i) for i in indices]
    return [f"{name}[{i}]" for i in indices]


def _up_to_date(path: Path, keys: List[str]) -> bool:
    """The shard at `path` exists and was computed from the images that `keys` describe."""
    if not path.exists():
        return False
    try:
        with np.load(path) as data:
            return "keys" in data.files and data["keys"].tolist() == keys
    except (OSError, ValueError, KeyError):
        return False  # unreadable: computed again


def _typed_options(method: str, options: dict) -> dict:
    """The given options as the method reads them, in JSON's own types (8, not "8"; 0.9, not
    "0.9"), so meta.json says what ran; a tensor or callable is described in words."""
    from ..registry import get_explainer
    from .options import canonical_options

    cls = get_explainer(method).cls
    settings = cls(**options).settings
    given = canonical_options(cls.options, options, method)
    return {name: settings[name] if isinstance(settings[name], (bool, int, float, str, type(None)))
            else f"<{type(settings[name]).__name__}>" for name in given if name in settings}


def _comparable(key: str, value):
    """Options compared by their text: a run resumed from a meta.json written before options kept
    their types is the same run."""
    return {k: str(v) for k, v in value.items()} if key == "options" and isinstance(value, dict) else value


def _check_meta(out: Path, meta: dict) -> None:
    """A resumed run must continue the same run: mixing shards of two settings would give an
    index whose rows silently disagree."""
    path = out / "meta.json"
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        raise VitxError(f"{path} is unreadable: remove it (and {out / 'maps'}) or choose another --out") from None
    keys = [k for k in meta if k != "grid" and _comparable(k, old.get(k)) != _comparable(k, meta[k])]
    if keys:
        first = keys[0]
        raise VitxError(
            f"{out} holds maps of another run ({first}: {old.get(first)!r}, now {meta[first]!r}); "
            "resume with the same settings or choose another --out"
        )


def explain_dataset(model, dataset, out, method: str = "rollout", name: str = "images", target=None,
                    token: Optional[str] = None, batch_size: int = DEFAULT_BATCH_SIZE, workers: int = 0, count: Optional[int] = None,
                    options: Optional[dict] = None, progress: bool = True, world=None, model_name: str = "") -> dict:
    """Explain every image of `dataset` ((pixels, label) items, preprocessed for `model`) and
    write the shards and index described above. Returns meta (with `written`: shards this
    process computed now, `skipped`: shards that already existed)."""
    from tqdm import tqdm

    from ..batches import batch_loader
    from ..distributed import World, barrier, batch_plan, my_batch_ids
    from ..capture.model_state import evaluation_mode

    world = world or World()
    options = dict(options or {})
    out = Path(out)
    total = len(dataset) if count is None else min(count, len(dataset))
    if total == 0:
        raise VitxError("no images to explain")
    plan = batch_plan(range(total), batch_size)
    maps_dir = out / "maps"
    meta = {"model": model_name, "method": method, "options": _typed_options(method, options),
            "token": token, "target": target, "batch_size": batch_size, "images": total, "shards": len(plan),
            "dataset": name}
    if world.is_main:
        _check_meta(out, meta)
        maps_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "meta.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))
    barrier(world)  # meta checked and written before any rank lists or writes shards
    keys = [_keys(dataset, name, batch) for batch in plan]
    todo = [i for i in range(len(plan)) if not _up_to_date(maps_dir / SHARD.format(i), keys[i])]
    skipped = len(plan) - len(todo)
    barrier(world)  # every rank listed the same missing shards before any is written
    mine = [todo[i] for i in my_batch_ids(len(todo), world)]
    skipped_images: List[str] = []
    loader = batch_loader(dataset, [plan[i] for i in mine], workers, skipped_images)
    bar = tqdm(total=len(plan), initial=skipped, desc=f"explain ({method})", unit="batch",
               disable=not (progress and world.is_main))
    with evaluation_mode(model):
        for shard, batch in zip(mine, loader):
            arrays = {**_shard_arrays(model, batch, method, target, token, options), "keys": np.array(keys[shard])}
            atomic_write(maps_dir / SHARD.format(shard), lambda tmp: _write_npz(tmp, arrays))
            bar.update(world.size if world.distributed else 1)
    bar.close()
    barrier(world)
    if world.is_main:
        write_index(out, dataset, name, len(plan))
    return {**meta, "written": len(mine), "skipped": skipped, "unreadable": skipped_images}


def _shard_arrays(model, batch, method, target, token, options) -> dict:
    """The arrays of one shard (see the module docstring); a batch none of whose images could
    be read gives an empty shard, so the shard exists and a resumed run does not retry it."""
    from .api import explain

    if not batch.indices:
        return {"index": np.zeros(0, np.int64), "maps": np.zeros((0, 0, 0), np.float32),
                "targets": np.zeros(0, np.int64), "predictions": np.zeros(0, np.int64),
                "probabilities": np.zeros(0, np.float32), "labels": np.zeros(0, np.int64)}
    result = explain(model, batch.pixels, method=method, target=target, token=token, batch_size=len(batch.pixels),
                     **options)
    probabilities, predictions = result.probabilities.max(dim=-1)
    predictions[~torch.isfinite(probabilities)] = -1  # NaN outputs: no prediction (and a NaN map)
    return {
        "index": np.asarray(batch.indices, dtype=np.int64),
        "maps": result.maps.numpy().astype(np.float32),
        "targets": result.targets.numpy().astype(np.int64) if result.targets is not None
        else np.full(len(batch.indices), -1, np.int64),
        "predictions": predictions.numpy().astype(np.int64),
        "probabilities": probabilities.numpy().astype(np.float32),
        "labels": batch.labels.numpy().astype(np.int64),
    }


def _write_npz(path, arrays) -> None:
    with open(path, "wb") as handle:  # a file object: np.savez would append .npz to a name
        np.savez(handle, **arrays)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value):
    """A text cell a spreadsheet would run as a formula (OWASP 'CSV injection': it starts
    with = + - @ tab or CR) gets a leading single quote, so a file named `=HYPERLINK(...)`
    is shown as text; numbers and other text are unchanged."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def raw_name_hex(source) -> str:
    """The bytes of a file name that is not valid UTF-8, as hex (`bytes.fromhex` gives them
    back); '' for every other name, which `source` holds as it is."""
    if source is None:
        return ""
    text = str(source)
    try:
        text.encode("utf-8")
        return ""
    except UnicodeEncodeError:
        return os.fsencode(text).hex()


def write_index(out: Path, dataset, name: str, shards: int) -> Path:
    """index.csv from the shards (so it is always what the shards hold)."""
    rows = []
    for shard in range(shards):
        path = out / "maps" / SHARD.format(shard)
        if not path.exists():
            raise VitxError(f"shard {path} is missing: run the same command again to finish")
        with np.load(path) as data:
            for row, index in enumerate(data["index"].tolist()):
                rows.append([index, None, int(data["labels"][row]), int(data["targets"][row]),
                             int(data["predictions"][row]), f"{float(data['probabilities'][row]):.6f}", shard, row])
    rows.sort(key=lambda r: r[0])
    for row, source in zip(rows, _sources(dataset, name, [r[0] for r in rows])):
        row[1] = safe_cell(printable(source))
        row.append(raw_name_hex(source))
    path = out / "index.csv"

    def save(tmp):
        # valid UTF-8 whatever the file names: a name that is not UTF-8 is shown with \xNN escapes in
        # `source`, and its bytes are kept in `source_bytes` (hex) so the file can be found again
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["index", "source", "label", "target", "prediction", "probability", "shard", "row",
                             "source_bytes"])
            writer.writerows(rows)

    atomic_write(path, save)
    return path


def read_maps(out) -> dict:
    """All shards of OUT concatenated in dataset order: {index, maps, targets, predictions,
    probabilities, labels} as numpy arrays (for analysis and tests)."""
    out = Path(out)
    meta = json.loads((out / "meta.json").read_text())
    parts = []
    for shard in range(meta["shards"]):
        with np.load(out / "maps" / SHARD.format(shard)) as data:
            if len(data["index"]):  # a shard of unreadable images only is empty
                parts.append({k: data[k] for k in data.files if k != "keys"})  # keys: per planned image, not per row
    if not parts:
        raise VitxError(f"{out} holds no maps (no image could be read)")
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(merged["index"], kind="stable")
    return {k: v[order] for k, v in merged.items()}
