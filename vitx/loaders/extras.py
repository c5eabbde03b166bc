"""Optional frameworks: a clear message when one is missing, instead of an ImportError."""
import importlib

from ..errors import VitxError

EXTRAS = {"transformers": "hf", "open_clip": "clip"}


def require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise VitxError(
            f"this model needs the optional package {module!r}: pip install \"vitx[{EXTRAS.get(module, module)}]\""
        ) from None
