"""The `vitx` command line (one module per command; `main` holds the group and `explain`)."""
from .main import main

__all__ = ["main"]
