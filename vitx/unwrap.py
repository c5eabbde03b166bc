"""Wrappers around a model, seen through in one place.

`nn.DataParallel`, `DistributedDataParallel` and `torch.compile` wrap the module that does
the work; vitx records and runs that module itself (eager, on its own device): hooks, flags
and function modes act on the eager module, and a compiled graph or replicas on other
devices would bypass them. A wrapper that *adds* work (a normalising `nn.Sequential`) is
not removed: `adapters/wrappers.py` explains it as a whole.
"""
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The eager module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model
