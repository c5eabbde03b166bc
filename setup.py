"""Packaging for vitx.

`plugins/` and `reference_models/` are installed inside the `vitx` namespace
(`vitx.plugins`, `vitx.reference_models`) so nothing generic such as a top-level
`plugins` package lands in site-packages. Built-in explainers register through the
`vitx` entry-point group, exactly like a third-party plugin would.
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
    packages=find_packages(include=["vitx", "vitx.*"]) + ["vitx.plugins", "vitx.reference_models"],
    package_dir={
        "vitx": "vitx",
        "vitx.plugins": "plugins",
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
            "raw_attention = vitx.plugins.raw_attention",
            "rollout = vitx.plugins.rollout",
            "grad_rollout = vitx.plugins.grad_rollout",
            "chefer2021 = vitx.plugins.chefer2021",
            "integrated_gradients = vitx.plugins.integrated_gradients",
            "gradcam = vitx.plugins.gradcam",
            "legrad = vitx.plugins.legrad",
            "perturbation = vitx.plugins.perturbation",
            "shapley = vitx.plugins.shapley",
            "attnlrp = vitx.plugins.attnlrp",
            "transformer_attribution = vitx.plugins.transformer_attribution",
            "libragrad = vitx.plugins.libragrad",
            "tokentm = vitx.plugins.tokentm",
            "beyond_intuition = vitx.plugins.beyond_intuition",
            "reference_models = vitx.reference_models.plugin",
        ],
    },
)
