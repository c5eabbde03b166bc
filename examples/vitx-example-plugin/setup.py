"""A third-party vitx plugin: one extra explainer, found through the `vitx` entry point."""
from setuptools import setup

setup(
    name="vitx-example-plugin",
    version="0.1.0",
    packages=["vitx_example_plugin"],
    install_requires=["vitx"],
    entry_points={"vitx": ["layer_mean = vitx_example_plugin.layer_mean"]},
)
