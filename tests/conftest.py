import sys
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
