"""Fine-tuning a pretrained ViT (timm or Hugging Face) on CIFAR-10, MNIST or Fashion-MNIST.

The usual recipe: the pretrained network with a new head for the dataset's classes,
inputs resized to the network's own resolution and normalised with its own statistics,
AdamW with layer-wise learning-rate decay (lower layers move less) and a short warmup.
The trainer (`train.py`, mode `finetune`) runs it with the same loop, mixed precision and
resumable, atomic checkpoints as the from-scratch modes; this module only knows how to
build the network, group its parameters and turn a dataset batch into its input.

A checkpoint's JSON records how to rebuild the network offline: the timm architecture
and its keyword arguments, or the Hugging Face config itself, plus the preprocessing, so
`vitx explain --model RUN_DIR` and `vitx inspect` load it without the hub.
"""
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import nn

from vitx.attribution.targets import as_logits
from vitx.errors import VitxError, suggest
from vitx.capture.model_state import remember_preprocessing
from vitx.registry import data_config

from vitx.datasets import dataset_info
from .config import TrainConfig

HF_PREFIX = "hf:"


@dataclass
class FinetuneConfig(TrainConfig):
    """TrainConfig plus the pretrained network; defaults are the fine-tuning recipe."""

    mode: str = "finetune"
    model: str = ""  # timm name, hf:ORG/NAME, or a local save_pretrained folder
    checkpoint: Optional[str] = None  # timm: pretrained weights from a file instead of the hub
    pretrained: bool = True  # False: random init (tests, offline smoke runs)
    model_kwargs: dict = field(default_factory=dict)  # timm create_model keyword arguments
    layer_decay: float = 0.75
    lr: float = 1e-4
    epochs: int = 10


# ----------------------------------------------------------------------------- which network


def resolve_source(spec: str) -> Tuple[str, str]:
    """-> ("hf", hub id or folder) or ("timm", architecture)."""
    if not spec:
        raise VitxError("--mode finetune needs --model NAME_OR_PATH (a timm ViT/DeiT, hf:ORG/NAME or a folder)")
    if spec.startswith(HF_PREFIX):
        return "hf", spec[len(HF_PREFIX):]
    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise VitxError(f"{spec}: a folder, but no config.json in it (save the model with save_pretrained)")
        return "hf", str(path)
    import timm

    from vitx.models import TIMM_ALIASES

    name = TIMM_ALIASES.get(spec, spec)
    if not timm.is_model(name):
        raise VitxError(f"unknown model {spec!r} to fine-tune.{suggest(spec, list(TIMM_ALIASES) + timm.list_models())} "
                        "Use a timm ViT/DeiT name, hf:ORG/NAME or a save_pretrained folder")
    return "timm", name


def _no_hub(what: str, exc: Exception, hint: str) -> VitxError:
    return VitxError(f"could not load pretrained weights for {what} ({type(exc).__name__}: "
                     f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); {hint}")


def _clean_config(config: dict) -> dict:
    """The preprocessing a fine-tuned network saw: the whole image resized (no crop)."""
    return {"input_size": [int(v) for v in config["input_size"]], "interpolation": config.get("interpolation", "bicubic"),
            "mean": [float(v) for v in config["mean"]], "std": [float(v) for v in config["std"]],
            "crop_pct": 1.0, "crop_mode": "center"}


def build_timm(config: FinetuneConfig, num_classes: int):
    import timm

    from vitx.models import read_state_dict

    _, name = resolve_source(config.model)
    kwargs = dict(config.model_kwargs, num_classes=num_classes)
    try:
        if config.checkpoint:
            read_state_dict(config.checkpoint)  # missing, unreadable or pickled code: a clear error first
            overlay = dict(file=str(Path(config.checkpoint).resolve()))
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        else:
            model = timm.create_model(name, pretrained=config.pretrained, **kwargs)
    except VitxError:
        raise
    except TypeError as exc:  # a keyword the architecture does not take
        raise VitxError(f"cannot build {name} with {config.model_kwargs}: {exc}") from None
    except Exception as exc:
        source = config.checkpoint or "the hub"
        raise _no_hub(f"{name} from {source}", exc, "pass --checkpoint FILE (offline) or --no-pretrained") from None
    meta = {"kind": "timm", "architecture": name, "kwargs": kwargs, "data_config": _clean_config(data_config(model)),
            "source": {"model": config.model, "checkpoint": config.checkpoint, "pretrained": config.pretrained}}
    return model, meta


def _hf_data_config(processor, hf_config) -> dict:
    size = getattr(processor, "size", None) or {}
    size = dict(size) if not isinstance(size, dict) else size
    height = size.get("height") or size.get("shortest_edge") or getattr(hf_config, "image_size", 224)
    width = size.get("width") or size.get("shortest_edge") or height
    normalise = getattr(processor, "do_normalize", True)
    channels = getattr(hf_config, "num_channels", 3)
    mean = list(processor.image_mean) if normalise else [0.0] * channels
    std = list(processor.image_std) if normalise else [1.0] * channels
    from vitx.capture.adapters.transformers import resample_name

    return _clean_config({"input_size": (channels, height, width), "mean": mean, "std": std,
                          "interpolation": resample_name(getattr(processor, "resample", 2))})


def build_hf(config: FinetuneConfig, num_classes: int, class_names):
    try:
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification
    except ImportError:
        raise VitxError("Hugging Face models need transformers: pip install transformers") from None
    _, source = resolve_source(config.model)
    if config.checkpoint:
        raise VitxError("--checkpoint is for timm models; a Hugging Face model comes from its folder or hub id")
    local = Path(source).is_dir()
    labels = dict(num_labels=num_classes, id2label={i: n for i, n in enumerate(class_names)},
                  label2id={n: i for i, n in enumerate(class_names)})
    try:
        processor = AutoImageProcessor.from_pretrained(source, local_files_only=local)
        if config.pretrained:
            model = AutoModelForImageClassification.from_pretrained(source, ignore_mismatched_sizes=True,
                                                                    local_files_only=local, **labels)
        else:
            model = AutoModelForImageClassification.from_config(
                AutoConfig.from_pretrained(source, local_files_only=local, **labels))
    except (OSError, ValueError, KeyError) as exc:
        hint = ("save the model and its image processor there with save_pretrained" if local
                else "run where the Hugging Face hub is reachable, or pass a local save_pretrained folder")
        raise _no_hub(source, exc, hint) from None
    hf_config = json.loads(model.config.to_json_string(use_diff=False))
    meta = {"kind": "hf", "hf_config": hf_config, "data_config": _hf_data_config(processor, model.config),
            "source": {"model": config.model, "pretrained": config.pretrained}}
    return model, meta


def build_finetune(config: TrainConfig):
    """(FineTuned wrapper, checkpoint meta) for `train.build`."""
    if not isinstance(config, FinetuneConfig):
        raise VitxError("mode finetune needs a FinetuneConfig (vitx train --mode finetune --model NAME)")
    info = dataset_info(config.dataset)
    kind, _ = resolve_source(config.model)
    if kind == "timm":
        model, meta = build_timm(config, len(info.classes))
    else:
        model, meta = build_hf(config, len(info.classes), info.classes)
    attach_meta(model, meta, list(info.classes))
    return FineTuned(model, meta["kind"], info, meta["data_config"], config.layer_decay), meta


def build_from_meta(meta: dict) -> nn.Module:
    """The network a fine-tuning checkpoint describes, randomly initialised, offline."""
    if meta["kind"] == "timm":
        import timm

        model = timm.create_model(meta["architecture"], pretrained=False, **meta["kwargs"])
    else:
        try:
            from transformers import AutoConfig, AutoModelForImageClassification
        except ImportError:
            raise VitxError("this checkpoint is a Hugging Face model: pip install transformers") from None
        hf_config = dict(meta["hf_config"])
        model = AutoModelForImageClassification.from_config(AutoConfig.for_model(hf_config.pop("model_type"), **hf_config))
    attach_meta(model, meta, meta.get("class_names"))
    return model


def attach_meta(model: nn.Module, meta: dict, class_names) -> None:
    """What vitx reads to explain the network: its preprocessing (kept by vitx for every
    adapter, and as timm's `pretrained_cfg` for timm's own tools) and the dataset's class names."""
    model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), **meta["data_config"],
                            "input_size": tuple(meta["data_config"]["input_size"]), "num_classes": len(class_names or [])}
    remember_preprocessing(model, meta["data_config"])  # read back by every adapter (Hugging Face included)
    model.class_names = list(class_names) if class_names else None


# ----------------------------------------------------------------------------- parameter groups


def _hf_layer_id(name: str, num_layers: int) -> int:
    """0 for the embeddings, i + 1 for encoder layer i, num_layers + 1 for the rest (final
    norm, pooler, classifier): the BEiT / MAE numbering timm uses for its own models."""
    if "embeddings" in name:
        return 0
    found = re.search(r"\.(?:layer|layers|blocks|block)\.(\d+)\.", name)
    return int(found.group(1)) + 1 if found else num_layers + 1


def hf_param_groups(model: nn.Module, weight_decay: float, layer_decay: float):
    num_layers = getattr(model.config, "num_hidden_layers", 0)
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = _hf_layer_id(name, num_layers)
        no_decay = param.ndim <= 1 or "position_embeddings" in name or "cls_token" in name
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": layer_decay ** (num_layers + 1 - layer)}
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def param_groups(model: nn.Module, kind: str, weight_decay: float, layer_decay: float):
    """AdamW groups with `lr_scale` = layer_decay ** (depth - layer), which timm's schedulers
    multiply into each group's learning rate (1 for the head, smallest for the embeddings)."""
    if kind == "timm":
        from timm.optim import param_groups_layer_decay

        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
        return param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
    return hf_param_groups(model, weight_decay, layer_decay)


# ----------------------------------------------------------------------------- inputs


def to_model_input(x: torch.Tensor, dataset_mean, dataset_std, data_config: dict, mean=None, std=None) -> torch.Tensor:
    """A batch normalised with the dataset's statistics -> the network's input: back to
    [0, 1], grey to three channels, resized to its resolution, normalised with its own
    mean and std.

    The resize runs on 8-bit pixels with torchvision's PIL-compatible kernel, so the network
    trains on what PIL-based preprocessing (timm's eval transform, which `vitx explain` uses,
    or a Hugging Face image processor) gives for the same picture, not on a float-bicubic
    variant of it that differs at sharp edges. The dataset's pixels are 8-bit to begin with.
    """
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    channels, height, width = data_config["input_size"]
    x = x * dataset_std + dataset_mean
    if x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != (height, width):
        mode = {"bicubic": InterpolationMode.BICUBIC, "nearest": InterpolationMode.NEAREST}.get(
            data_config.get("interpolation"), InterpolationMode.BILINEAR)
        pixels = (x * 255).round_().clamp_(0, 255).to(torch.uint8)
        x = TF.resize(pixels, [height, width], interpolation=mode, antialias=True).float() / 255
    mean = torch.tensor(data_config["mean"], device=x.device).view(1, -1, 1, 1) if mean is None else mean
    std = torch.tensor(data_config["std"], device=x.device).view(1, -1, 1, 1) if std is None else std
    return (x - mean) / std


class FineTuned(nn.Module):
    """The network as the trainer sees it: dataset batch in, logits out.

    Called on the wrapper itself, `state_dict` / `load_state_dict` are the network's own, so
    checkpoints and resume states hold exactly the network's keys and load into it without
    this wrapper. Inside a parent (timm's ModelEmaV3 holds a copy) the keys stay nested,
    as the parent's load_state_dict expects them.
    """

    def __init__(self, model: nn.Module, kind: str, info, data_config: dict, layer_decay: float):
        super().__init__()
        self.model, self.kind, self.data_config, self.layer_decay = model, kind, data_config, layer_decay
        view = lambda values: torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("dataset_mean", view(info.mean), persistent=False)
        self.register_buffer("dataset_std", view(info.std), persistent=False)
        self.register_buffer("mean", view(data_config["mean"]), persistent=False)
        self.register_buffer("std", view(data_config["std"]), persistent=False)

    def forward(self, x):
        pixels = to_model_input(x, self.dataset_mean, self.dataset_std, self.data_config, self.mean, self.std)
        return as_logits(self.model(pixels))

    def param_groups(self, weight_decay: float):
        return param_groups(self.model, self.kind, weight_decay, self.layer_decay)

    def state_dict(self, *, destination=None, prefix="", keep_vars=False):
        if prefix:
            return super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        return self.model.state_dict(destination=destination, keep_vars=keep_vars)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)
