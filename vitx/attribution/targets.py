"""What is explained: a `(B,)` score computed from the model's output.

A target is fixed once, on the output of the explained forward pass (the predicted class is
chosen there), and then scores any later forward of the same images the same way: the
integrated-gradients path, perturbed copies, LRP's modified backward. That is the contract
of captum and pytorch-grad-cam (a callable on the output), so user code written for them
carries over:

    vitx.explain(model, images, target=lambda out: out[:, 3] - out[:, 5])

Built in: a class index (`None` = predicted class, an int, or one int per image) and any
callable `output -> (B,) score`. Embedding- and text-similarity targets build on the same
`Target` class.
"""
import numbers
from typing import Callable, Optional

import torch

from ..errors import VitxError


def as_logits(output) -> torch.Tensor:
    """The tensor a classifier's output holds (tensor, tuple, or an object with .logits)."""
    if torch.is_tensor(output):
        return output
    if hasattr(output, "logits") and torch.is_tensor(output.logits):
        return output.logits
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    raise VitxError(f"cannot find logits in the model output ({type(output).__name__})")


class Target:
    """A fixed way to score an output. `indices` are class indices when the target is a class."""

    indices: Optional[torch.Tensor] = None
    description: str = "target"

    def score(self, output) -> torch.Tensor:
        raise NotImplementedError


class ClassTarget(Target):
    """The logit of one class per image."""

    def __init__(self, indices: torch.Tensor):
        self.indices = indices
        self.description = "class"

    def score(self, output) -> torch.Tensor:
        logits = as_logits(output)
        return logits.gather(1, self.indices.to(logits.device)[:, None])[:, 0]


class CallableTarget(Target):
    """Any `output -> (B,) score` function (captum / pytorch-grad-cam convention)."""

    def __init__(self, function: Callable):
        self.function = function
        self.description = getattr(function, "__name__", "callable")

    def score(self, output) -> torch.Tensor:
        value = self.function(output)
        if not torch.is_tensor(value) or value.dim() != 1:
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise VitxError(f"a target callable must return a (batch,) tensor of scores, got {shape}")
        return value


def _class_indices(target) -> torch.Tensor:
    """Validated class indices: ints only (no bools, strings or fractional numbers)."""
    values = target.flatten().tolist() if torch.is_tensor(target) else (
        list(target) if isinstance(target, (list, tuple)) else [target])
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
                continue  # 243.0 from a tensor or numpy float: an integer in disguise
            raise VitxError(f"a class target must be an integer class index, got {value!r} ({type(value).__name__})")
    if not values:
        raise VitxError("empty target list")
    try:
        return torch.tensor([int(v) for v in values], dtype=torch.long)
    except (OverflowError, RuntimeError, ValueError):
        raise VitxError(f"class index out of range: {target!r}") from None


def resolve_target(target, output) -> Target:
    """Fix the target on the output of the explained forward.

    None -> the predicted class; an int or a sequence of ints -> those classes (checked
    against the class count); a callable -> that score; a `Target` -> itself.
    """
    if isinstance(target, Target):
        return target
    if callable(target) and not torch.is_tensor(target):
        return CallableTarget(target)
    logits = as_logits(output)
    if logits.dim() != 2:
        raise VitxError(f"class targets need (batch, classes) logits; the model returned shape {tuple(logits.shape)}")
    batch, num_classes = logits.shape
    if target is None:
        return ClassTarget(logits.detach().argmax(dim=-1))
    indices = _class_indices(target).to(logits.device)
    if indices.numel() == 1:
        indices = indices.expand(batch)
    if indices.numel() != batch:
        raise VitxError(f"got {indices.numel()} targets for {batch} images")
    bad = indices[(indices < 0) | (indices >= num_classes)]
    if bad.numel():
        raise VitxError(
            f"category index {int(bad[0])} out of range: the model has {num_classes} classes (0..{num_classes - 1})"
        )
    return ClassTarget(indices)


def split_target(target, start: int, stop: int, count: int):
    """The part of a user's target that belongs to images [start, stop) of `count`."""
    if target is None or callable(target) or isinstance(target, Target):
        return target
    indices = _class_indices(target)
    if indices.numel() == 1:
        return indices
    if indices.numel() != count:
        raise VitxError(f"got {indices.numel()} targets for {count} images")
    return indices[start:stop]
