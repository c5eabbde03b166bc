"""Hugging Face transformers vision models (ViT, DeiT, DINOv2, registers, BEiT, CLIP, SigLIP, Swin).

Every attention in transformers 5 goes through one dispatch: the module asks
`ALL_ATTENTION_FUNCTIONS` for `config._attn_implementation` ("eager", "sdpa", ...). So one
registered function, "vitx_record", reaches eager and sdpa models alike: inside `attach` the
vision tower's configs point at it (the text tower of a CLIP model is left alone), it
computes attention explicitly and passes the probabilities through `record`, and on exit
every config gets back its own implementation, byte for byte. No module is replaced.

transformers is imported only when a model from it is seen, so vitx imports without it.
"""
import sys
import threading
from contextlib import contextmanager
from typing import Dict, Optional

from torch import nn

from ...errors import VitxError
from ..attention_math import Record, explicit_attention
from ..layout import MEAN_TOKEN, TokenLayout, infer_layout
from .base import IMAGENET_MEAN, PROBE_NOTE, Adapter, grid_from_patch_conv

ATTENTION_NAME = "vitx_record"
_registered = False
_register_lock = threading.Lock()
# attention module -> record function, for modules inside an open `attach`
_active: Dict[nn.Module, Record] = {}

# PIL resample codes (as image processors store them) -> timm interpolation names
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _vitx_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Same contract as transformers' eager attention, through vitx's kernel
    (vitx.capture.attention_math); records the probabilities."""
    mask = None if attention_mask is None else attention_mask[..., : key.shape[-2]]
    out, probs = explicit_attention(query, key, value, attn_mask=mask, dropout_p=dropout if module.training else 0.0,
                                    scale=scaling, enable_gqa=True, record=_active.get(module))
    return out.transpose(1, 2).contiguous(), probs


def _ensure_registered() -> None:
    global _registered
    with _register_lock:
        if not _registered:
            try:
                from transformers import AttentionInterface
            except ImportError:
                raise VitxError("vitx records transformers models through AttentionInterface (transformers 5): "
                                'pip install -U "vitx[hf]"') from None

            AttentionInterface.register(ATTENTION_NAME, _vitx_attention)
            _registered = True


def is_transformers_model(model: nn.Module) -> bool:
    if "transformers" not in sys.modules:
        return False
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def hf_model(model: nn.Module) -> Optional[nn.Module]:
    """The transformers model inside `model`: itself, or the one a vitx wrapper holds."""
    if is_transformers_model(model):
        return model
    inner = getattr(model, "vitx_hf_model", None)
    return inner if inner is not None and is_transformers_model(inner) else None


def vision_tower(model: nn.Module) -> nn.Module:
    """The image encoder: `vision_model` of CLIP / SigLIP (dual or vision-only), else the model."""
    inner = hf_model(model)
    return getattr(inner, "vision_model", None) or inner


def vision_config(model: nn.Module):
    inner = hf_model(model)
    config = inner.config
    return getattr(config, "vision_config", None) or config


def attention_modules(model: nn.Module):
    """Modules of the vision tower that dispatch attention through `config._attn_implementation`.

    Found by what they are (a module holding a config and query/key projections), so the
    pooling head of SigLIP (an nn.MultiheadAttention, cross attention of a probe) is not one.
    """
    sites = []
    for module in vision_tower(model).modules():
        if getattr(module, "config", None) is None or isinstance(module, nn.MultiheadAttention):
            continue
        names = {name for name, _ in module.named_children()}
        if ({"q_proj", "k_proj"} <= names) or ({"query", "key"} <= names):
            sites.append(module)
    return sites


class TransformersAdapter(Adapter):
    name = "transformers"
    priority = 90

    def matches(self, model):
        return hf_model(model) is not None

    @contextmanager
    def attach(self, model, record):
        _ensure_registered()
        config = hf_model(model).config
        if model is hf_model(model) and getattr(config, "text_config", None) is not None:
            raise VitxError(
                f"{type(model).__name__} is an image-text model whose forward needs text: explain its image side "
                "with vitx.loaders.huggingface.ImageTextModel(model, tokenizer), or load it with --model hf:DIR"
            )
        sites = attention_modules(model)
        configs = {id(m.config): m.config for m in sites}
        saved = {key: config.__dict__.get("_attn_implementation_internal") for key, config in configs.items()}
        try:
            for module in sites:
                _active[module] = record
            for config in configs.values():
                # set the stored value, not the property: its setter would recurse into sub-configs
                config.__dict__["_attn_implementation_internal"] = ATTENTION_NAME
            yield
        finally:
            for key, config in configs.items():
                config.__dict__["_attn_implementation_internal"] = saved[key]
            for module in sites:
                _active.pop(module, None)

    def refuse(self, model, explainer):
        """Swin and its kin: attention methods refused before any forward (as for timm's Swin)."""
        from .hierarchical import hf_refusal

        return hf_refusal(getattr(vision_config(model), "model_type", ""), explainer)

    def layout(self, model, input_size, num_tokens):
        tower = vision_tower(model)
        config = vision_config(model)
        grid = grid_from_patch_conv(tower, input_size)
        names = {name.rsplit(".", 1)[-1] for name, _ in tower.named_parameters()}
        prefix = {}
        if names & {"cls_token", "class_embedding"}:
            prefix["cls"] = len(prefix)
        if "distillation_token" in names:
            prefix["dist"] = len(prefix)
        for r in range(getattr(config, "num_register_tokens", 0) or 0):
            prefix[f"reg{r}"] = len(prefix)
        if len(prefix) + grid[0] * grid[1] != num_tokens:
            return infer_layout(num_tokens, grid)
        mean_pooled = getattr(config, "use_mean_pooling", False) or "cls" not in prefix
        return TokenLayout(prefix=prefix, num_prefix=len(prefix), grid=grid,
                           default_token=MEAN_TOKEN if mean_pooled else "cls")

    def token_note(self, model):
        if getattr(getattr(vision_tower(model), "head", None), "probe", None) is not None:  # SigLIP's MAP head
            return PROBE_NOTE
        return None

    def data_config(self, model):
        """The model's own image-processor settings: those saved with it when vitx loaded it
        (`vitx_processor`), else the defaults of its family's processor at its config's size."""
        inner = hf_model(model)
        processor = getattr(model, "vitx_processor", None) or getattr(inner, "vitx_processor", None)
        config = vision_config(model)
        if processor is not None:
            return processor_data_config(processor, config)
        # a module built in memory: its family's normalisation and resampling at its own size
        data = processor_data_config(default_processor(inner), config)
        size = getattr(config, "image_size", 224)
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        data.update(input_size=(data["input_size"][0], *size), crop_pct=1.0,
                    crop_mode="center" if size[0] == size[1] else "squash")
        return data

    def output_kind(self, model):
        inner = hf_model(model)
        if inner is not model:
            return "embedding"  # vitx's image-encoder wrapper returns the projected embedding
        return "logits" if type(inner).__name__.endswith(("ForImageClassification", "WithTeacher")) else "embedding"

    def encode_text(self, model, prompts):
        encode = getattr(model, "encode_text", None)
        if encode is None:
            raise VitxError(
                f"{type(model).__name__} has no text tower: image-text targets need a CLIP or SigLIP model "
                "(load the full model folder, e.g. --model hf:DIR of a CLIPModel / SiglipModel)"
            )
        return encode(prompts)


def default_processor(inner):
    """The family's image processor with its default settings (no download), or None."""
    try:
        from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
        import transformers

        model_type = getattr(inner.config, "model_type", None) or ""
        model_type = model_type[: -len("_vision_model")] if model_type.endswith("_vision_model") else model_type
        names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}
        name = names.get("pil") if isinstance(names, dict) else (names[0] if names else None)
        name = name or (names.get("torchvision") if isinstance(names, dict) else None)
        return getattr(transformers, name)() if name else None
    except Exception:  # an unknown family still gets a sensible config below
        return None


def _size(value):
    """A processor size (dict or SizeDict) -> ('exact', (h, w)) or ('shortest', edge) or None."""
    if value is None:
        return None
    get = value.get if isinstance(value, dict) else (lambda k: getattr(value, k, None))
    if get("height") and get("width"):
        return "exact", (int(get("height")), int(get("width")))
    if get("shortest_edge"):
        return "shortest", int(get("shortest_edge"))
    return None


def resample_name(resample) -> str:
    """The timm interpolation name of a PIL resampling filter as image processors store it
    (an int or a PIL enum; unset: bilinear)."""
    return _RESAMPLE.get(int(getattr(resample, "value", resample) or 2), "bilinear")


def processor_data_config(processor, config) -> dict:
    """timm-style data config equal to what the image processor does to a PIL image."""
    image_size = getattr(config, "image_size", 224)
    default_hw = tuple(image_size) if isinstance(image_size, (list, tuple)) else (image_size, image_size)
    channels = getattr(config, "num_channels", 3)
    if processor is None:
        return {"input_size": (channels, *default_hw), "mean": (0.5,) * 3, "std": (0.5,) * 3,
                "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "squash"}
    get = processor.get if isinstance(processor, dict) else (lambda k, d=None: getattr(processor, k, d))
    mean = tuple(get("image_mean") or IMAGENET_MEAN) if get("do_normalize", True) is not False else (0.0,) * 3
    std = tuple(get("image_std") or (0.229, 0.224, 0.225)) if get("do_normalize", True) is not False else (1.0,) * 3
    interpolation = resample_name(get("resample", 2))
    size = _size(get("size")) if get("do_resize", True) is not False else None
    crop = _size(get("crop_size")) if get("do_center_crop") else None
    if crop is not None and crop[0] == "exact":
        height, width = crop[1]
        config = {"input_size": (channels, height, width), "mean": mean, "std": std,
                  "interpolation": interpolation, "crop_pct": 1.0, "crop_mode": "center",
                  "crop_rounding": "floor"}  # the processors' `(size - crop) // 2` (see inputs.split_transform)
        if size is not None and size[0] == "shortest":
            config["crop_pct"] = min(height, width) / size[1]
        elif size is not None:  # resized to exactly (h, w), aspect ratio not kept, then cropped (DeiT, BEiT)
            config.update(crop_mode="squash", resize_size=size[1])
        return config
    if size is not None and size[0] == "exact":
        return {"input_size": (channels, *size[1]), "mean": mean, "std": std,
                "interpolation": interpolation, "crop_pct": 1.0, "crop_mode": "squash"}
    return {"input_size": (channels, *default_hw), "mean": mean, "std": std, "interpolation": interpolation,
            "crop_pct": 1.0, "crop_mode": "squash"}
