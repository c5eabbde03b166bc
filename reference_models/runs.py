"""Run-folder safety for `vitx train`: check the settings before any work, never overwrite a
run without being asked, one writer per folder, and resume only what was started.

Kept apart from the training loop so that every entry point (train, finetune, study) gets
the same checks from one place.
"""
import errno
import fcntl
import math
import os
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from vitx.errors import VitxError

from .watch import LOGS

RUN_FILES = ("state.pt", "model.safetensors", "model.json", "history.json", "history.csv", "curves.png")
LOCK_NAME = ".train.lock"
# Settings that may differ on --resume: they change where the run is read and written, not
# what it computes. `epochs` may grow: the schedule and curriculum then follow the new total.
RESUMABLE_CHANGES = ("out", "data_dir", "download", "device", "epochs", "log")


# Sizes that build tensors: bounded so that one argument cannot drive training past the
# machine's memory (`--dim 1000000` would ask for terabytes of weights before failing).
MAX_SIZES = {"--batch-size": 4096, "--dim": 4096, "--depth": 64, "--heads": 64, "--patch-size": 512,
             "--teacher-width": 1024}


def _positive_int(value, flag):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise VitxError(f"{flag} must be a positive integer, got {value!r}")
    if flag in MAX_SIZES and value > MAX_SIZES[flag]:
        raise VitxError(f"{flag} must be at most {MAX_SIZES[flag]}, got {value}")


def _finite(value, flag, low=None, positive=False):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise VitxError(f"{flag} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise VitxError(f"{flag} must be a finite number, got {value!r}")
    if positive and number <= 0:
        raise VitxError(f"{flag} must be greater than 0, got {value!r}")
    if low is not None and number < low:
        raise VitxError(f"{flag} must be at least {low}, got {value!r}")


def validate_config(config, full_size: int) -> None:
    """Every setting the trainer reads, checked before a dataset or a model is touched.
    `full_size`: the dataset's image side (the curriculum's sizes must fit under it)."""
    _positive_int(config.epochs, "--epochs")
    _positive_int(config.batch_size, "--batch-size")
    _finite(config.lr, "--lr", positive=True)
    _finite(config.weight_decay, "--weight-decay", low=0.0)
    _finite(config.warmup_epochs, "--warmup-epochs", low=0.0)
    _finite(config.label_smoothing, "--label-smoothing", low=0.0)
    if config.label_smoothing >= 1:
        raise VitxError(f"--label-smoothing must be below 1, got {config.label_smoothing}")
    _finite(config.kd_temperature, "--kd-temperature", positive=True)
    _finite(config.kd_alpha, "--kd-alpha", low=0.0)
    _finite(config.ema, "--ema", low=0.0)
    if config.ema >= 1:
        raise VitxError(f"--ema must be below 1 (a decay such as 0.999), got {config.ema}")
    _finite(config.mixup, "--mixup", low=0.0)
    if config.log not in LOGS:
        raise VitxError(f"unknown --log {config.log!r}; use one of {', '.join(LOGS)}")
    for flag, limit in (("--train-limit", config.train_limit), ("--test-limit", config.test_limit)):
        if limit < 0:
            raise VitxError(f"{flag} must be 0 (all) or a positive number of images, got {limit}")
    if config.mode == "teacher":
        _positive_int(config.teacher_width, "--teacher-width")
    else:
        vit = config.vit
        for key in ("dim", "depth", "heads", "patch_size"):
            if key in vit:
                _positive_int(vit[key], f"--{key.replace('_', '-')}")
        dim, heads = vit.get("dim", 64), vit.get("heads", 4)
        if dim % heads:
            raise VitxError(f"--heads {heads} does not divide --dim {dim}: each head needs dim/heads channels")
        _finite(vit.get("mlp_ratio", 2.0), "--mlp-ratio", positive=True)
        _finite(vit.get("drop_path", 0.0), "--drop-path", low=0.0)
    for size in config.curriculum:
        smallest = 1 if config.mode == "teacher" else config.vit.get("patch_size", 4)
        if not smallest <= size <= full_size:
            raise VitxError(f"--curriculum size {size} is out of range: each size must be between {smallest} "
                            f"(one patch) and {full_size} (the image size)")
    if len(config.curriculum) > config.epochs:
        raise VitxError(f"--curriculum has {len(config.curriculum)} stages but only {config.epochs} epoch(s)")
    for flag, value in (("--out", config.out), ("--data-dir", config.data_dir)):
        if value and Path(value).exists() and not Path(value).is_dir():
            raise VitxError(f"{flag} {value} is a file; it must be a folder")
    if config.teacher and not Path(config.teacher).is_file():
        raise VitxError(f"--teacher {config.teacher}: no such checkpoint file")


def existing_run(out: Path):
    """The files of a previous run in `out` (empty when there is none)."""
    return [name for name in RUN_FILES if (out / name).exists()]


def describe_run(out: Path) -> str:
    import json

    try:
        meta = json.loads((out / "model.json").read_text())
        history, planned = meta.get("history") or [], (meta.get("train") or {}).get("epochs")
        done = history[-1]["epoch"] if history else 0
        finished = planned is not None and done >= planned
        accuracy = meta.get("test_accuracy")
        what = "a finished run" if finished else f"an unfinished run ({done} of {planned} epochs)"
        return what + (f", test accuracy {accuracy:.4f}" if isinstance(accuracy, float) else "")
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return "a previous run"


@contextmanager
def run_folder(out, resume: bool, force: bool):
    """Hold `out` for one training: refuse a folder with a run in it unless resuming or
    forced, take an exclusive lock (a second trainer on the same folder is refused), and
    remove temp files a killed run left behind. With `force`, the old run's files go."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VitxError(f"--out {out} is a file; it must be a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VitxError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    try:
        handle = open(out / LOCK_NAME, "a")
    except OSError as exc:
        raise VitxError(f"cannot write to --out {out}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise VitxError(f"another training is writing to {out}; wait for it or use another --out") from None
            raise
        found = existing_run(out)
        if found and not resume and not force:
            raise VitxError(f"{out} already holds {describe_run(out)}; continue it with --resume, overwrite it "
                            "with --force, or choose another --out")
        if force and not resume:
            for name in found:
                (out / name).unlink()
        for leftover in out.glob(".*.tmp"):  # from atomic_write, when a run was killed mid-save
            leftover.unlink()
        yield out
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def check_resume(config, saved: dict) -> None:
    """Refuse to resume with settings that differ from the saved run's (naming each one);
    `RESUMABLE_CHANGES` may differ. `saved`: the run's recorded TrainConfig as a dict."""
    current = asdict(config)
    changed = []
    for key, value in current.items():
        if key in RESUMABLE_CHANGES or key not in saved:
            continue
        if key == "vit" and config.mode == "teacher":  # the CNN teacher has no ViT settings to keep
            continue
        old = saved[key]
        if key == "vit":  # a missing key means the architecture's default
            defaults = _vit_defaults()
            for sub in sorted(set(value) | set(old)):
                before, after = old.get(sub, defaults.get(sub)), value.get(sub, defaults.get(sub))
                if before != after:
                    changed.append(f"--{sub.replace('_', '-')} {before} -> {after}")
        elif _normal(value) != _normal(old):
            changed.append(f"--{key.replace('_', '-')} {old} -> {value}")
    if changed:
        raise VitxError("cannot resume with changed settings (" + ", ".join(changed) + "); use the run's settings, "
                        "or train into another --out (only --epochs, --device, --data-dir and --log may change)")


def _vit_defaults():
    from dataclasses import MISSING, fields

    from .vit import ViTConfig

    return {f.name: f.default for f in fields(ViTConfig) if f.default is not MISSING}


def _normal(value):
    return list(value) if isinstance(value, tuple) else value


def check_more_epochs(config, done: int) -> None:
    if config.epochs < done:
        raise VitxError(f"--epochs {config.epochs} is fewer than the {done} epoch(s) already trained")


def space_error(path, exc: OSError) -> VitxError:
    """One line for a failed checkpoint write; the previous checkpoint is still there."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return VitxError(f"cannot save to {path}: {reason}; the previous checkpoint is intact")
