"""What vitx changes on a model while it explains it, and how it gives it back: one lock per
model (threads never interleave their changes) and eval mode with every module's own
training flag restored."""
import threading
import weakref
from contextlib import contextmanager

from torch import nn

_locks: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


@contextmanager
def model_lock(model: nn.Module):
    """Serialise everything vitx does to one model across threads (re-entrant in a thread).

    Recording changes a model for the duration of a forward (fused-attention flags, hooks,
    replaced forwards, eval mode); two threads doing that to one model at once would record
    each other's attention and restore each other's flags in the wrong order. Calls on
    different models still run in parallel.
    """
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
    with lock:
        yield


@contextmanager
def evaluation_mode(model: nn.Module):
    """Eval mode inside, and each module's own training flag restored afterwards.

    Holds the model's lock (see `model_lock`): two threads saving and restoring the flags
    of one model in interleaved order would otherwise leave it in the wrong mode.
    """
    with model_lock(model):
        flags = [(m, m.training) for m in model.modules()]
        for module, _ in flags:
            module.training = False
        try:
            yield model
        finally:
            for module, training in flags:
                module.training = training
