"""Which methods apply to a model, and the one error that says so before any forward.

An adapter may define `refuse(model, explainer) -> Optional[str]`: the reason `explainer`
cannot explain `model` (None when it can). Families whose attention cannot be chained into
one token-by-token flow (windowed or hierarchical attention, channel attention, two token
sets) refuse the attention methods with a message that names the cause and the methods that
do apply, instead of failing inside the recorder or, worse, returning a map computed from
the wrong attention.
"""
from typing import Dict, List, Optional

from ..errors import VitxError


def needs_attention(explainer) -> bool:
    """True for methods that read recorded attention or its gradient."""
    from .requirements import ATTENTION, ATTENTION_GRAD

    return bool(explainer.requirements() & {ATTENTION, ATTENTION_GRAD})


def _registered():
    from ..registry import get_registry

    return get_registry().explainers


def attention_methods() -> List[str]:
    return sorted(name for name, e in _registered().items() if needs_attention(e.cls))


def window_methods() -> List[str]:
    """Attention methods that also explain hierarchical models recorded as stage layers
    (window or pooled attention, `Explainer.windows`)."""
    return sorted(name for name, e in _registered().items() if needs_attention(e.cls) and e.cls.windows)


def methods_without_attention() -> List[str]:
    """Installed methods that need no attention (the core names no plugin: what is installed
    is what applies)."""
    return sorted(name for name, e in _registered().items() if not needs_attention(e.cls))


def refusal(family: str, why: str, method: str, allowed: Optional[Dict[str, str]] = None) -> str:
    """The message of a refused attention method: what the family does, why that rules the
    method out, and which methods apply instead (`allowed`: attention methods that still
    apply, name -> what they read)."""
    allowed = allowed or {}
    flow = [m for m in attention_methods() if m not in allowed]
    applies = [f"{name} ({what})" for name, what in allowed.items()] + methods_without_attention()
    return (
        f"{family}: method {method!r} cannot explain this model: {why}. "
        f"Attention methods ({', '.join(flow)}) are not defined for it; methods that apply: "
        f"{', '.join(applies)} (see `vitx methods`)"
    )


def check_method(adapter, model, explainer) -> None:
    """Raise the adapter's refusal of `explainer` for `model`, if it has one."""
    message: Optional[str] = adapter.refuse(model, explainer)
    if message:
        raise VitxError(message)
