"""vitx: see why a Vision Transformer predicted what it did.

    import vitx
    exp = vitx.explain(model, images, method="grad_rollout", target=243)
    exp.maps, exp.predictions, exp.overlay()

    with vitx.record_attention(model) as rec:
        logits = model(x)
    rec.attentions, rec.layout
"""
from . import imaging, ops  # noqa: F401  (vitx.ops: the math plugins share)
from .attribution.api import explain, list_methods
from .attribution.explainer import Explainer, Option
from .attribution.explanation import Explanation, Prediction
from .attribution.multimodal import reference_target, text_targets
from .attribution.targets import SimilarityTarget, Target, TextTarget
from .capture import Adapter, AttentionRecorder, TokenLayout, record_attention
from .capture.model_state import remember_preprocessing
from .errors import VitxError
from .hookspecs import hookimpl
from .models import load_model
from .registry import register_plugin

__version__ = "0.1.0"


def __getattr__(name):
    """`vitx.views`, `vitx.figures` and `vitx.inspect_models` on first use: the inspection side
    draws with matplotlib and OpenCV, which `import vitx` does not load."""
    if name in ("views", "figures"):
        import importlib

        return importlib.import_module(f".inspect.{name}", __name__)
    if name == "inspect_models":
        from .inspect.inspection import inspect_models

        return inspect_models
    raise AttributeError(f"module 'vitx' has no attribute {name!r}")
__all__ = [
    "Adapter", "AttentionRecorder", "Explainer", "Explanation", "Option", "Prediction",
    "TokenLayout", "VitxError", "explain", "hookimpl", "inspect_models", "list_methods", "load_model",
    "record_attention", "reference_target", "register_plugin", "remember_preprocessing", "SimilarityTarget", "Target", "TextTarget",
    "text_targets",
]
