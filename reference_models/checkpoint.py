"""Checkpoints: weights as safetensors + a JSON sidecar (architecture, classes,
preprocessing, history), and a resume state file. Every write is atomic (temp + rename),
so an interrupted save never destroys the previous checkpoint."""
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vitx.errors import VitxError
from vitx.models import load_weights

from .teacher import TeacherCNN
from .vit import ViT, ViTConfig


def atomic_write(path, write) -> None:
    """write(tmp_path) then rename over `path` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide checkpoints from other users
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_model(model, meta: dict, path) -> None:
    """`path`.safetensors + `path`.json."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path.with_suffix(".safetensors"), lambda tmp: save_file(state, tmp))
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))


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
    weights = path.with_suffix(".safetensors")
    meta = read_meta(path)
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
