"""Models by name: aliases, loading weights from the hub or a local file, class names.

Names resolve in this order: a name registered through `vitx_register_models` (aliases
below, reference models, plugins), `torchvision/<name>`, any timm model name.
"""
import pickle
import warnings
from functools import lru_cache, partial
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

from .errors import VitxError, suggest
from .hookspecs import hookimpl

TIMM_ALIASES: Dict[str, str] = {
    "deit_tiny": "deit_tiny_patch16_224",
    "deit_small": "deit_small_patch16_224",
    "deit_base": "deit_base_patch16_224",
    "deit_tiny_distilled": "deit_tiny_distilled_patch16_224",
    "deit_small_distilled": "deit_small_distilled_patch16_224",
    "deit_base_distilled": "deit_base_distilled_patch16_224",
    "deit3_small": "deit3_small_patch16_224",
    "deit3_base": "deit3_base_patch16_224",
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "vit_large": "vit_large_patch16_224",
    "vit_base_reg4": "vit_base_patch16_reg4_gap_256",
}
TORCHVISION_PREFIX = "torchvision/"


def read_state_dict(path) -> Dict[str, torch.Tensor]:
    """Tensors from a safetensors or torch file, never running pickled code."""
    from timm.models import load_state_dict

    path = Path(path)
    if path.is_dir():
        files = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".pth", ".pt", ".bin", ".ckpt"))
        hint = f" (it holds {', '.join(files[:3])})" if files else ""
        raise VitxError(f"checkpoint {path} is a folder; pass the weights file inside it{hint}")
    if not path.is_file():
        raise VitxError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol chatter; errors still raise
            return load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
            raise VitxError(
                f"refusing to load {path}: it holds pickled Python objects, not only tensors, and "
                "loading it could run code. Save model.state_dict() or use safetensors"
            ) from None
        raise VitxError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None


WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")  # DataParallel/DDP, Lightning, torch.compile


def strip_wrappers(state: Dict[str, torch.Tensor], own=None) -> Dict[str, torch.Tensor]:
    """Drop a prefix that every key shares because the model was saved inside a wrapper
    (`module.` from DDP, `model.` from a Lightning module, `_orig_mod.` from torch.compile),
    unless the model's own keys (`own`) start with it too."""
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own or ()):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _few(keys, n=4) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_weights(model: nn.Module, state: Dict[str, torch.Tensor], source: str, arch: str) -> nn.Module:
    """load_state_dict, with a one-line message naming the keys that do not fit."""
    own = model.state_dict()
    state = strip_wrappers(state, own)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_few(unexpected)}")
    if reshaped:
        problems.append(f"shape mismatch (checkpoint vs model): {_few(reshaped, 2)}")
    if problems:
        raise VitxError(f"checkpoint {source} does not match {arch}: " + "; ".join(problems))
    model.load_state_dict(state)
    return model


def _pretrained_error(name: str, exc: Exception) -> VitxError:
    return VitxError(
        f"could not fetch pretrained weights for {name} ({type(exc).__name__}; offline?). "
        "Pass --checkpoint FILE (a .safetensors or .pth state dict), or run where the "
        "Hugging Face hub is reachable"
    )


def load_timm(arch: str, checkpoint=None, pretrained: Optional[bool] = None, **kwargs) -> nn.Module:
    import timm

    if checkpoint is not None:
        state = strip_wrappers(read_state_dict(checkpoint))
        classes = checkpoint_classes(arch, state)
        if classes is not None and "num_classes" not in kwargs:
            kwargs["num_classes"] = classes  # a fine-tuned checkpoint brings its own head
        model = timm.create_model(arch, pretrained=False, **kwargs)
        return load_weights(model, state, str(checkpoint), arch)
    if pretrained is False:
        return timm.create_model(arch, pretrained=False, **kwargs)
    try:
        return timm.create_model(arch, pretrained=True, **kwargs)
    except Exception as exc:
        raise _pretrained_error(arch, exc) from None


def checkpoint_classes(arch: str, state: Dict[str, torch.Tensor]) -> Optional[int]:
    """The class count of the classifier in `state`, found where timm says the classifier of
    `arch` is (its pretrained config's `classifier`: 'head', 'head.fc', 'fc', 'classifier', or
    several for distilled heads), or None when the checkpoint has no such layer."""
    from timm.models import get_pretrained_cfg

    config = get_pretrained_cfg(arch)
    names = getattr(config, "classifier", None) or "head"
    for name in (names,) if isinstance(names, str) else names:
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.dim() >= 2:
            return weight.shape[0]
    return None


def load_torchvision(arch: str, checkpoint=None, pretrained: Optional[bool] = None, **kwargs) -> nn.Module:
    import torchvision

    if arch not in torchvision.models.list_models():
        raise VitxError(f"unknown torchvision model {arch!r}.{suggest(arch, torchvision.models.list_models())}")
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        return load_weights(torchvision.models.get_model(arch, weights=None, **kwargs), state, str(checkpoint), arch)
    if pretrained is False:
        return torchvision.models.get_model(arch, weights=None, **kwargs)
    try:
        return torchvision.models.get_model(arch, weights="DEFAULT", **kwargs)
    except Exception as exc:
        raise _pretrained_error(arch, exc) from None


@hookimpl
def vitx_register_models(register):
    for alias, arch in TIMM_ALIASES.items():
        register(alias, partial(load_timm, arch), description=f"timm {arch}", family="timm")


def model_names():
    """Every registered name, for suggestions."""
    from .registry import get_registry

    return list(get_registry().models)


def load_model(model, checkpoint=None, pretrained: Optional[bool] = None, device=None, **kwargs) -> nn.Module:
    """A model ready to explain: built by name (or given), weights loaded, eval mode, on device.

    `pretrained=None` means: from the hub unless a checkpoint is given.
    """
    from .registry import get_registry

    if isinstance(model, nn.Module):
        module = model
    else:
        name = str(model)
        registered = get_registry().models
        from .loaders import load_framework_model

        if name in registered:
            module = registered[name].loader(checkpoint=checkpoint, pretrained=pretrained, **kwargs)
        elif (framework_model := load_framework_model(name)) is not None:  # hf:, open_clip:, a model folder
            module = framework_model
        elif Path(name).is_dir():
            module = _load_folder(Path(name))
        elif Path(name).is_file():
            module = get_registry().manager.hook.vitx_load_model_file(path=name)
            if module is None:
                raise VitxError(f"vitx does not know how to build a model from the file {name}; "
                                "pass --model NAME --checkpoint FILE")
        elif name.startswith(TORCHVISION_PREFIX):
            module = load_torchvision(name[len(TORCHVISION_PREFIX):], checkpoint, pretrained, **kwargs)
        else:
            import timm

            if not timm.is_model(name):
                candidates = list(registered) + timm.list_models()
                raise VitxError(f"unknown model {name!r}.{suggest(name, candidates)} See `vitx models`")
            module = load_timm(name, checkpoint, pretrained, **kwargs)
    return module.to(resolve_device(device)).eval()


def _load_folder(folder: Path) -> nn.Module:
    """A folder given as the model: a `vitx train` run folder is its model.safetensors."""
    from .registry import get_registry

    weights = folder / "model.safetensors"
    if weights.is_file():
        module = get_registry().manager.hook.vitx_load_model_file(path=str(weights))
        if module is not None:
            return module
    raise VitxError(f"{folder} is a folder but not a vitx training run (no model.safetensors + model.json in it); "
                    "pass a model name with --checkpoint FILE")


def resolve_device(device=None, action: str = "run") -> torch.device:
    """'auto'/None -> cuda when available, else cpu; 'cuda' without a GPU is an error. One check for
    every command (`action` names what was asked: run, train)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise VitxError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VitxError("--device cuda was requested but no CUDA GPU is available; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise VitxError("--device mps was requested but MPS (Apple GPU) is not available; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):  # meta holds no data; others are not supported
        raise VitxError(f"cannot {action} on device {str(device)!r}; use auto, cpu or cuda")
    return device


def model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def class_names(model: nn.Module, num_classes: int):
    """Class names when known: the model's own `class_names`, a Hugging Face config's
    `id2label` (unless it holds only the LABEL_0, LABEL_1... placeholders transformers fills
    in), or ImageNet-1k for 1000 classes."""
    names = getattr(model, "class_names", None)
    if names:
        return list(names)
    labels = getattr(getattr(model, "config", None), "id2label", None)
    if isinstance(labels, dict) and len(labels) == num_classes:
        try:
            named = [str(labels[i]) for i in range(num_classes)]
        except KeyError:
            named = None
        if named and named != [f"LABEL_{i}" for i in range(num_classes)]:
            return named
    return imagenet_class_names() if num_classes == 1000 else None


@lru_cache(maxsize=1)
def imagenet_class_names():
    """timm's ImageNet-1k descriptions, read once (reading them costs ~20 ms)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(1000))
