"""Models vitx cannot run as given, refused with one clear error before any forward.

Each of these otherwise fails deep inside torch (a hook on a ScriptModule, a copy out of a
meta tensor, a forward called without its other arguments) with a traceback that does not
say what to do.
"""
import inspect

import torch
from torch import nn

from ..errors import VitxError


def check_model(model: nn.Module) -> None:
    """Raise a VitxError when `model` is a TorchScript module, holds meta tensors, or has a
    forward that needs more than the image batch."""
    if isinstance(model, torch.jit.ScriptModule):
        raise VitxError(
            "vitx cannot explain a TorchScript module (torch.jit.script / trace): it records attention with "
            "hooks and by swapping attention functions, which compiled code bypasses. Pass the eager nn.Module "
            "(the model before torch.jit.script), or load it by name / checkpoint")
    if any(t.is_meta for t in _tensors(model)):
        raise VitxError(
            f"{type(model).__name__} lives on the meta device (its weights hold no data): load its weights first "
            "(model.to_empty(device='cpu') then load_state_dict, or build it outside torch.device('meta'))")
    extra = _extra_arguments(model)
    if extra:
        names = ", ".join(extra)
        raise VitxError(
            f"{type(model).__name__}.forward needs more than the images ({names}): vitx calls model(images). "
            f"Wrap it in a module whose forward takes only the images, e.g. class Wrapped(nn.Module): "
            f"def forward(self, x): return model(x, {extra[0]}=...)")


def _tensors(model: nn.Module):
    yield from model.parameters()
    yield from model.buffers()


def _extra_arguments(model: nn.Module):
    """Names of the required arguments of `model.forward` after the first (the images)."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a builtin or C forward: nothing to read
        return []
    required = [p for p in parameters if p.default is inspect.Parameter.empty
                and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    return [p.name for p in required[1:]]
