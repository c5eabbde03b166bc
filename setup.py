"""Packaging for vitx.

`reference_models/` is installed inside the `vitx` namespace (`vitx.reference_models`) so
nothing generic lands in site-packages. The built-in explainers are the modules of
`vitx/plugins/`, found by the registry on disk (a new method is one file, no line here); third
parties, the reference models and the core's hook modules use the `vitx` entry-point group.
"""
from setuptools import find_packages, setup

def requirements(path):
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip() and not line.startswith("#")]


INSTALL_REQUIRES = requirements("requirements.txt")
TEST_REQUIRES = requirements("requirements-test.txt")

setup(
    name="vitx",
    version="0.1.0",
    description="Explainability for Vision Transformers: attention capture for any ViT, "
    "explainers as pluggy plugins, a library API and a CLI.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["vitx", "vitx.*"]) + ["vitx.reference_models"],
    package_dir={
        "vitx": "vitx",
        "vitx.reference_models": "reference_models",
    },
    package_data={"vitx.reference_models": ["weights/*.safetensors", "weights/*.json"], "vitx.inspect": ["*.js"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": TEST_REQUIRES,
        "hf": ["transformers>=5.0", "safetensors"],  # Hugging Face models (--model hf:...), imported lazily
        "clip": ["open_clip_torch>=3.0"],  # open_clip models (--model open_clip:...), imported lazily
        "tensorboard": ["tensorboard>=2.14"],  # vitx train --log tensorboard, imported lazily
    },
    entry_points={
        "console_scripts": ["vitx = vitx.cli.main:main"],
        "vitx": [
            "vitx.adapters = vitx.capture.adapters",  # the core's own hooks, through the same door
            "vitx.models = vitx.models",
            "reference_models = vitx.reference_models.plugin",
        ],
    },
)
