"""Hugging Face transformers models: from the hub (online) or a save_pretrained folder (offline).

The class comes from the config's `architectures` (so a DeiT with teacher, a Dinov2Model or a
CLIPModel loads as what was saved), falling back to AutoModelForImageClassification, then
AutoModel. The folder's image-processor settings are kept on the model (`vitx_processor`),
and the transformers adapter preprocesses with them. A CLIP / SigLIP dual encoder is wrapped
in `ImageTextModel`: its forward is the image tower's projected embedding, and it encodes
text prompts for image-text targets with the tokenizer saved beside it.
"""
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import VitxError
from .extras import require


class ImageTextModel(nn.Module):
    """A CLIP-like dual encoder seen as an image model: forward(pixels) -> (B, D) image embedding."""

    def __init__(self, model: nn.Module, tokenizer=None, processor=None):
        super().__init__()
        self.vitx_hf_model = model
        self.tokenizer = tokenizer
        self.vitx_processor = processor

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.vitx_hf_model.get_image_features(pixel_values=pixel_values)
        return features if torch.is_tensor(features) else features.pooler_output

    def tokenize(self, prompts: Sequence[str]) -> dict:
        if self.tokenizer is None:
            raise VitxError("this model folder has no tokenizer, so text prompts cannot be encoded; save the "
                            "tokenizer (or processor) with save_pretrained into the same folder")
        siglip = "siglip" in getattr(self.vitx_hf_model.config, "model_type", "")
        tokens = self.tokenizer(list(prompts), padding="max_length" if siglip else True, return_tensors="pt")
        device = next(self.parameters()).device
        return {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            features = self.vitx_hf_model.get_text_features(**self.tokenize(prompts))
        return features if torch.is_tensor(features) else features.pooler_output


def _is_dual_encoder(config) -> bool:
    return getattr(config, "vision_config", None) is not None and getattr(config, "text_config", None) is not None


def _model_class(transformers, config):
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    try:
        transformers.AutoModelForImageClassification.from_config  # noqa: B018
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

        if config.model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES and getattr(config, "num_labels", 0):
            return transformers.AutoModelForImageClassification
    except ImportError:
        pass
    return transformers.AutoModel


def _processor(source: str, local: bool):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(source, local_files_only=local)
    except Exception:  # no preprocessor_config.json: the family's defaults apply (adapter)
        warnings.warn(f"{source}: no image-processor settings found; using the model family's defaults")
        return None


def _tokenizer(source: str, local: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=local)
    except Exception:
        return None


def load_hf(source: str, attn_implementation: Optional[str] = None) -> nn.Module:
    transformers = require("transformers")
    local = Path(source).is_dir()
    if not local and (source.startswith((".", "/", "~")) or Path(source).exists()):
        raise VitxError(f"no model folder at {source}: expected a folder written by save_pretrained")
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=local)
    except Exception as exc:
        where = "folder" if local else "hub model"
        raise VitxError(f"cannot read the transformers config of the {where} {source!r} "
                        f"({type(exc).__name__}{'; offline?' if not local else ''})") from None
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    cls = _model_class(transformers, config)
    try:
        model = cls.from_pretrained(source, local_files_only=local, **kwargs)
    except Exception as exc:
        raise VitxError(f"cannot load {source!r} as {cls.__name__}: {type(exc).__name__}: {exc}".split("\n")[0]) from None
    processor = _processor(source, local)
    if _is_dual_encoder(model.config) and hasattr(model, "get_image_features"):
        return ImageTextModel(model, tokenizer=_tokenizer(source, local), processor=processor)
    model.vitx_processor = processor
    return model
