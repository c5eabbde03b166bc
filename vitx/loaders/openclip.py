"""open_clip models: a built-in name with a pretrained tag (`ViT-B-32@laion2b_s34b_b79k`,
online), an `hf-hub:` id, or a local folder with open_clip_config.json and its weights (offline).

The loaded CLIP keeps its tokenizer (`vitx_tokenizer`) for image-text targets; its image
tower's `preprocess_cfg` drives preprocessing (see the open_clip adapter).
"""
from pathlib import Path

from torch import nn

from ..errors import VitxError
from .extras import require


def load_open_clip(source: str) -> nn.Module:
    open_clip = require("open_clip")
    if Path(source).is_dir():
        name, tag = f"local-dir:{source}", None
    else:
        name, _, tag = source.partition("@")
    try:
        model = open_clip.create_model(name, pretrained=tag or None)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:
        raise VitxError(f"cannot load open_clip model {source!r}: {type(exc).__name__}: {exc}".split("\n")[0]) from None
    model.vitx_tokenizer = tokenizer
    return model
