import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs (CI runs them once)")


@pytest.fixture(autouse=True)
def fresh_registry():
    """Each test sees the plugins installed at that moment."""
    from vitx import registry

    registry.reset()
    yield
    registry.reset()


@pytest.fixture
def interrupted_in_second_epoch(monkeypatch):
    """A context manager: inside it, `vitx train`'s per-epoch evaluation raises
    KeyboardInterrupt on its second call (Ctrl-C during the second epoch); the real one is
    back on exit."""
    from vitx.reference_models import train as train_module

    real_evaluate = train_module.evaluate

    @contextmanager
    def interrupted():
        calls = {"n": 0}

        def evaluate(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return real_evaluate(*args, **kwargs)

        monkeypatch.setattr(train_module, "evaluate", evaluate)
        try:
            yield
        finally:
            monkeypatch.setattr(train_module, "evaluate", real_evaluate)

    return interrupted
