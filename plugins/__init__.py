"""Built-in explainers of vitx (installed as `vitx.plugins`).

Each module registers through the `vitx` entry-point group, exactly like a third-party
plugin; vitx's core never imports them directly.
"""
