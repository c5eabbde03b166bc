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


def methods_without_attention(stages: bool = False) -> List[str]:
    """Installed methods that need no attention (the core names no plugin: what is installed
    is what applies); `stages`: for a hierarchical model, whose token grid changes between
    stages, so methods that need one token set (`Explainer.one_token_set`) are left out."""
    return sorted(name for name, e in _registered().items()
                  if not needs_attention(e.cls) and not (stages and e.cls.one_token_set))


def refusal(family: str, why: str, method: str, allowed: Optional[Dict[str, str]] = None,
            stages: bool = True) -> str:
    """The message of a refused attention method: what the family does, why that rules the
    method out, and which methods apply instead (`allowed`: attention methods that still
    apply, name -> what they read; `stages`: the family is hierarchical)."""
    allowed = allowed or {}
    flow = [m for m in attention_methods() if m not in allowed]
    applies = [f"{name} ({what})" for name, what in allowed.items()] + methods_without_attention(stages)
    return (
        f"{family}: method {method!r} cannot explain this model: {why}. "
        f"Attention methods ({', '.join(flow)}) are not defined for it; methods that apply: "
        f"{', '.join(applies)} (see `vitx methods`)"
    )


def hierarchical_refusal(family: str, why: str, explainer, allowed: Optional[Dict[str, str]] = None) -> Optional[str]:
    """What a hierarchical family refuses before any forward: attention methods other than the
    `allowed` stage methods (with the family's reason `why`), and methods that need one token
    set; None for a method that applies."""
    if needs_attention(explainer) and explainer.name not in (allowed or {}):
        return refusal(family, why, explainer.name, allowed=allowed)
    return _one_token_set_refusal(family, explainer, allowed)


def _one_token_set_refusal(family: str, explainer, allowed: Optional[Dict[str, str]]) -> Optional[str]:
    """The refusal of a method that needs one token set (`Explainer.one_token_set`) for a
    hierarchical model, or None for any other method."""
    if not getattr(explainer, "one_token_set", False):
        return None
    applies = [f"{name} ({what})" for name, what in (allowed or {}).items()] + methods_without_attention(stages=True)
    return (f"{family}: method {explainer.name!r} cannot explain this model: it reads the token embeddings where "
            "the blocks start as the model's one token set, and this model's token grid changes between stages "
            f"(patch merging or pooling); methods that apply: {', '.join(applies)} (see `vitx methods`)")


def check_method(adapter, model, explainer) -> None:
    """Raise the adapter's refusal of `explainer` for `model`, if it has one."""
    message: Optional[str] = adapter.refuse(model, explainer)
    if message:
        raise VitxError(message)
