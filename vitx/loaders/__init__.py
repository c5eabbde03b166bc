"""Loaders for models of other frameworks, by a name prefix or a folder's contents.

`hf:ORG/NAME` or `hf:DIR` (or a folder holding a config.json): Hugging Face transformers;
`open_clip:NAME[@TAG]` or `open_clip:DIR` (or a folder holding open_clip_config.json): open_clip.
Each framework is imported only when asked for, so vitx works without them installed.
"""
from pathlib import Path
from typing import Optional

from torch import nn

HF_PREFIX = "hf:"
OPEN_CLIP_PREFIX = "open_clip:"


def load_framework_model(name: str) -> Optional[nn.Module]:
    """The model `name` refers to when it belongs to a framework loader here, else None."""
    if name.startswith(HF_PREFIX):
        from .huggingface import load_hf

        return load_hf(name[len(HF_PREFIX):])
    if name.startswith(OPEN_CLIP_PREFIX):
        from .openclip import load_open_clip

        return load_open_clip(name[len(OPEN_CLIP_PREFIX):])
    folder = Path(name)
    if folder.is_dir():
        if (folder / "open_clip_config.json").is_file():
            from .openclip import load_open_clip

            return load_open_clip(name)
        if (folder / "config.json").is_file():
            from .huggingface import load_hf

            return load_hf(name)
    return None
