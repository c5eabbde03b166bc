"""What vitx keeps on a model and what it changes while it explains it: the preprocessing saved
with a checkpoint (read back by every adapter), one lock per model (threads never interleave
their changes) and eval mode with every module's own training flag restored."""
import threading
import weakref
from contextlib import contextmanager

from torch import nn

PREPROCESSING = "vitx_data_config"


def remember_preprocessing(model: nn.Module, data_config: dict) -> None:
    """Keep the preprocessing a model was trained or fine-tuned with on the model itself, so
    that whichever adapter explains it preprocesses the way training did (a fine-tuned Hugging
    Face model's processor settings, a timm model's resize and crop), not its family's defaults."""
    setattr(model, PREPROCESSING, dict(data_config))


def saved_preprocessing(model: nn.Module):
    """The data config `remember_preprocessing` kept on `model`, or None."""
    saved = getattr(model, PREPROCESSING, None)
    return dict(saved) if isinstance(saved, dict) else None


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
