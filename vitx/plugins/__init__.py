"""Built-in explainers of vitx: one module per method (or family of methods).

The registry registers every module here as a plugin named after it (no setup.py line, no
reinstall: a new file is a new method), and each imports only `vitx.plugin`, the door a
third-party package uses (an import contract checks it). vitx's core never imports them.
"""
