"""`python -m vitx ...` (what torchrun and subprocess tests call)."""
from .cli.main import main

main()
