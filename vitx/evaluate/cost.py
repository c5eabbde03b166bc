"""What a method costs, in forward-equivalents per image, counted (not assumed).

One image is explained with a hook on the model that counts the images of every forward pass
(masked copies and path points stacked on the batch count one each) and whether autograd was
recording it: a forward with gradients is followed by its backward, counted as two forwards.
So rollout costs 1, a gradient method's forward and backward 3, integrated gradients with 32
steps 1 + 32 x 3 = 97, and shapley with 16 orders of 49 patches 1 + 2 + 16 x 48 = 771, whatever
the implementation does inside: the count is what ran. `vitx evaluate --budget N` keeps the
methods within N, and prints every cost before it runs.
"""
from typing import Dict, Iterable, Optional

import torch

from ..attribution.api import explain
from ..errors import VitxError

DEFAULT_BUDGET = 100  # forward-equivalents per image: the methods `vitx evaluate` runs by default


class _OverLimit(Exception):
    pass


class _Counter:
    def __init__(self, limit: Optional[float]):
        self.rows = 0
        self.with_gradients = 0
        self.limit = limit

    @property
    def total(self) -> int:
        return self.rows + 2 * self.with_gradients

    def __call__(self, module, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()), None)
        rows = x.shape[0] if torch.is_tensor(x) and x.dim() >= 1 else 1
        self.rows += rows
        if torch.is_grad_enabled():
            self.with_gradients += rows
        if self.limit is not None and self.total > self.limit:
            raise _OverLimit  # no need to finish a method already over the budget


def forward_equivalents(model, image: torch.Tensor, method: str, options: Optional[dict] = None,
                        limit: Optional[float] = None) -> float:
    """Forward-equivalents one image costs `method` (options as `vitx.explain` takes them):
    images through the model's forward, plus two for each that ran with gradients. Past
    `limit` the count stops and the cost is infinite (the model is restored all the same)."""
    if image.dim() != 4 or image.shape[0] != 1:
        raise VitxError(f"cost is measured on one preprocessed image (1, C, H, W), got {tuple(image.shape)}")
    counter = _Counter(limit)
    handle = model.register_forward_pre_hook(counter, with_kwargs=True)
    try:
        explain(model, image, method=method, **(options or {}))
    except _OverLimit:
        return float("inf")
    finally:
        handle.remove()
    return float(counter.total)


def method_costs(model, image: torch.Tensor, methods: Iterable[str], options: Optional[Dict[str, dict]] = None,
                 limit: Optional[float] = None) -> Dict[str, float]:
    """{method: forward-equivalents per image} for each of `methods` on `image` (inf: over `limit`)."""
    options = options or {}
    return {m: forward_equivalents(model, image, m, options.get(m), limit) for m in methods}


def describe(costs: Dict[str, float], limit: Optional[float] = None) -> str:
    """'rollout 1, chefer2021 3, rise > 100': the costs as `vitx evaluate` prints them."""
    return ", ".join(f"{m} {c:g}" if c != float("inf") else f"{m} > {limit:g}" for m, c in costs.items())


def within_budget(costs: Dict[str, float], budget: float):
    """(kept, left out) method names: those costing at most `budget`, and the others."""
    kept = [m for m, c in costs.items() if c <= budget]
    return kept, [m for m in costs if m not in kept]
