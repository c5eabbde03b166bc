"""Checkpoints: weights as safetensors + a JSON sidecar (architecture, classes,
preprocessing, history), and a resume state file. Every write is atomic (temp + rename),
so an interrupted save never destroys the previous checkpoint."""
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vitx.errors import VitxError
from vitx.files import atomic_write
from vitx.models import load_weights

from .teacher import TeacherCNN
from .vit import ViT, ViTConfig


def save_model(model, meta: dict, path) -> None:
    """`path`.safetensors + `path`.json."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path.with_suffix(".safetensors"), lambda tmp: save_file(state, tmp))
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))


def check_meta(meta, sidecar) -> None:
    """A hand-edited model.json: one line naming the field that is wrong, instead of a
    TypeError from deep inside the model's constructor."""
    from dataclasses import MISSING, fields

    def bad(field, why, value):
        raise VitxError(f"{sidecar}: field {field} {why}, got {value!r}")

    if not isinstance(meta, dict):
        bad("(top level)", "must be a JSON object", type(meta).__name__)
    if meta.get("kind") not in ("vit", "teacher", "timm", "hf"):
        bad("kind", "must be 'vit', 'teacher', 'timm' or 'hf'", meta.get("kind"))
    if meta["kind"] in ("timm", "hf"):
        return  # fine-tuned runs: rebuilt by their own framework, which checks its own config
    config = meta.get("config")
    if not isinstance(config, dict):
        bad("config", "must be an object", config)
    if meta["kind"] == "vit":
        defaults = {f.name: (f.default if f.default is not MISSING else f.default_factory()) for f in fields(ViTConfig)}
    else:
        defaults = {"in_chans": 1, "num_classes": 10, "width": 32}
    for key, value in config.items():
        if key not in defaults:
            bad(f"config.{key}", "is not a setting of this model", value)
        default = defaults[key]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                bad(f"config.{key}", "must be true or false", value)
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad(f"config.{key}", "must be a positive integer", value)
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                bad(f"config.{key}", "must be a non-negative number", value)
        elif key in ("mean", "std"):
            if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                bad(f"config.{key}", "must be a list of numbers", value)
    if meta["kind"] == "vit":
        merged = {**defaults, **config}
        if merged["dim"] % merged["heads"]:
            bad("config.heads", f"must divide config.dim ({merged['dim']})", merged["heads"])
        for key in ("mean", "std"):
            if len(merged[key]) not in (1, merged["in_chans"]):
                bad(f"config.{key}", f"must have {merged['in_chans']} value(s), one per channel", merged[key])
    names = meta.get("class_names", config.get("class_names"))
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        bad("class_names", "must be a list of strings", names)


def build_model(meta: dict):
    if meta["kind"] == "vit":
        return ViT(ViTConfig(**meta["config"]))
    if meta["kind"] == "teacher":
        model = TeacherCNN(**meta["config"])
        model.class_names = meta.get("class_names")
        return model
    if meta["kind"] in ("timm", "hf"):  # fine-tuned pretrained networks
        from .finetune import build_from_meta

        return build_from_meta(meta)
    raise VitxError(f"unknown model kind {meta['kind']!r}")


def read_meta(path) -> dict:
    sidecar = Path(path).with_suffix(".json")
    if not sidecar.is_file():
        raise VitxError(f"{path}: no {sidecar.name} beside it describing the model")
    try:
        return json.loads(sidecar.read_text())
    except json.JSONDecodeError as exc:
        raise VitxError(f"{sidecar}: not valid JSON ({exc})") from None


def load_model_file(path):
    """A reference model (ViT, DeiT or teacher) from `x.safetensors` + `x.json`, eval mode."""
    path = Path(path)
    if path.is_dir():  # a run folder
        path = path / "model.safetensors"
    weights = path.with_suffix(".safetensors")
    meta = read_meta(path)
    check_meta(meta, path.with_suffix(".json"))
    if not weights.is_file():
        raise VitxError(f"weights not found: {weights}")
    model = build_model(meta)
    load_weights(model, load_file(str(weights)), str(weights), meta["kind"])
    model.vitx_meta = meta
    return model.eval()


def save_state(state: dict, path) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
