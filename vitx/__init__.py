"""vitx: see why a Vision Transformer predicted what it did.

    import vitx
    exp = vitx.explain(model, images, method="grad_rollout", target=243)
    exp.maps, exp.predictions, exp.overlay()

    with vitx.record_attention(model) as rec:
        logits = model(x)
    rec.attentions, rec.layout
"""
from . import figures, imaging, views  # noqa: F401  (vitx.views.attention_statistics etc. for research code)
from .adapters import Adapter
from .api import explain, list_methods
from .capture import AttentionRecorder, record_attention
from .errors import VitxError
from .explainer import Explainer, Option
from .explanation import Explanation, Prediction
from .inspection import inspect_models
from .hookspecs import hookimpl
from .layout import TokenLayout
from .models import load_model
from .registry import register_plugin

__version__ = "0.1.0"
__all__ = [
    "Adapter", "AttentionRecorder", "Explainer", "Explanation", "Option", "Prediction",
    "TokenLayout", "VitxError", "explain", "hookimpl", "inspect_models", "list_methods", "load_model",
    "record_attention", "register_plugin",
]
