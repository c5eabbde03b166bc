"""Argument checks every command shares, run before a model is loaded, so a bad value costs
nothing and always reads as one `Error:` line."""
import os
from pathlib import Path

from ..errors import VitxError


def positive(value, flag: str) -> int:
    """`--n 0` or `--n -5` is an error, never "none" or "all but 5"."""
    if value is None or value < 1:
        raise VitxError(f"{flag} must be at least 1, got {value}")
    return value


# Sizes a user types are bounded here, so that one argument cannot drive a command past the
# machine's memory or fork bomb it: images or masked copies per forward pass, decoding processes.
MAX_BATCH = 4096
MAX_WORKERS = 64


def within(value, flag: str, low: int, high: int) -> int:
    """`value` if low <= value <= high, else one error line naming the flag and the range."""
    if value is None or not low <= value <= high:
        raise VitxError(f"{flag} must be in {low}..{high}, got {value}")
    return value


def out_folder(path, flag: str = "--out") -> Path:
    """Create the output folder now and make sure it can be written, instead of failing
    after minutes of work (or with a traceback)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise VitxError(f"{flag} {out} is a file; it must be a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VitxError(f"cannot create {flag} {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise VitxError(f"cannot write to {flag} {out}: permission denied")
    return out


def model_and_checkpoint(model, checkpoint, default: str):
    """(model, checkpoint) to load. A weights file alone does not say which architecture it
    belongs to, so `--checkpoint FILE` without `--model` asks for one, instead of silently
    loading the default model; a reference-model file or run folder describes itself."""
    if checkpoint is None or model is not None:
        return model or default, checkpoint
    path = Path(checkpoint)
    if path.is_dir() and (path / "model.json").is_file() or path.is_file() and path.with_suffix(".json").is_file():
        return str(path), None
    raise VitxError(f"--checkpoint {checkpoint} needs --model NAME: the architecture the weights belong to "
                    "(see `vitx models`)")
