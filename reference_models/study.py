"""The study: ViTs trained from scratch with and without the same CNN teacher. By default
baseline ViT vs. ViT + classic KD vs. DeiT (distillation token); the `mnist` preset compares
the baseline with DeiT under hard and soft distillation. With `with_finetune`, a pretrained
ViT fine-tuned on the same data joins them (what pretraining does to attention).
`study_report.py` turns the finished runs into the table, figures and report.

Presets: `smoke` (a subset, a few epochs: minutes on a 2-core CPU), `full` (the recipe for
one GPU) and `mnist` (the bundled MNIST models' recipe: 99 % on a CPU, about 20 minutes per
run). Each run lives in OUT/<name>/ and is reused (resumed) when present, so an interrupted
study continues where it stopped.
"""
import json
from dataclasses import replace
from pathlib import Path

import torch

import vitx
from .checkpoint import load_model_file
from vitx.datasets import dataset_info, load_split
from .finetune import FinetuneConfig, resolve_source
from .train import TrainConfig, train

PRESETS = {
    "smoke": dict(epochs=3, train_limit=12000, test_limit=2000, batch_size=128, teacher_epochs=2, augment="flip",
                  vit=dict(dim=64, depth=4, heads=4, patch_size=4, mlp_ratio=2.0, local_ffn=True)),
    "full": dict(epochs=100, train_limit=0, test_limit=0, batch_size=128, teacher_epochs=30,
                 vit=dict(dim=192, depth=9, heads=12, patch_size=4, mlp_ratio=2.0, drop_path=0.1, local_ffn=True)),
    # The bundled mnist_vit / mnist_deit recipe: all 60k digits, the full 10k test set, each
    # run under 20 minutes on a 2-core CPU (reference_models/weights/README.md has the figures).
    "mnist": dict(epochs=7, train_limit=0, test_limit=0, batch_size=128, teacher_epochs=5, augment="affine-half",
                  teacher_augment="affine", students=("baseline", "deit", "deit_soft"),
                  vit=dict(dim=64, depth=4, heads=4, patch_size=4, mlp_ratio=2.0, local_ffn=True)),
}
STUDENTS = ("baseline", "kd", "deit")  # a preset without its own `students`
# What each student's run changes in the preset's settings.
STUDENT_MODES = {"baseline": dict(mode="baseline"), "kd": dict(mode="kd"), "deit": dict(mode="deit"),
                 "deit_soft": dict(mode="deit", deit_soft=True)}


def default_preset(dataset: str) -> str:
    """MNIST has a recipe that reaches 99 % on a CPU; the other datasets start with smoke."""
    return "mnist" if dataset == "mnist" else "smoke"


# The fine-tuned column: a few epochs at the pretrained network's resolution (on one GPU;
# the smoke preset's subset is small because a 224 px network is slow on a CPU).
FINETUNE_PRESETS = {
    "smoke": dict(epochs=1, train_limit=2000, batch_size=32, warmup_epochs=0.2, augment="flip"),
    "full": dict(epochs=10, train_limit=0, batch_size=128, warmup_epochs=1.0),
    "mnist": dict(epochs=1, train_limit=2000, batch_size=32, warmup_epochs=0.2, augment="none"),
}


def finished_finetune(spec):
    """The checkpoint path when `spec` is a finished fine-tuning run (folder or model file), else None."""
    path = Path(spec)
    path = path / "model.safetensors" if path.is_dir() else path
    if not path.with_suffix(".json").is_file():
        return None
    meta = json.loads(path.with_suffix(".json").read_text())
    return path if meta.get("kind") in ("timm", "hf") else None


def study_configs(dataset, preset, out, data_dir=None, device="cpu", download=True, finetune=None,
                  finetune_checkpoint=None, finetune_pretrained=True, log="none"):
    settings = dict(PRESETS[preset])
    teacher_epochs = settings.pop("teacher_epochs")
    teacher_augment = settings.pop("teacher_augment", "default")
    students = settings.pop("students", STUDENTS)
    base = TrainConfig(dataset=dataset, data_dir=data_dir, device=device, download=download, log=log, **settings)
    out = Path(out)
    configs = {"teacher": replace(base, mode="teacher", epochs=teacher_epochs, out=str(out / "teacher"), lr=3e-3,
                                  augment=teacher_augment)}
    teacher_path = str(out / "teacher" / "model.safetensors")
    for name in students:
        configs[name] = replace(base, out=str(out / name), teacher=teacher_path if name != "baseline" else None,
                                **STUDENT_MODES[name])
    if finetune:
        configs["finetune"] = FinetuneConfig(
            dataset=dataset, data_dir=data_dir, device=device, download=download, out=str(out / "finetune"),
            test_limit=settings["test_limit"], model=finetune, checkpoint=finetune_checkpoint,
            pretrained=finetune_pretrained, **FINETUNE_PRESETS[preset])
    return configs


def _summary(history):
    return {"test_accuracy": history[-1]["test_accuracy"], "epochs": history[-1]["epoch"],
            "train_seconds": round(sum(h["seconds"] for h in history), 1)}


def run_study(dataset="fashion_mnist", preset=None, out="study", data_dir=None, device="cpu",
              download=True, num_images=6, statistics_images=64, progress=True, with_finetune=None,
              finetune_checkpoint=None, finetune_pretrained=True, log="none"):
    """`preset`: a key of PRESETS (default: `default_preset(dataset)`). `with_finetune`: a
    pretrained network to fine-tune here (timm name, hf:ORG/NAME, a save_pretrained folder)
    or a finished `vitx train --mode finetune` run (folder or model file). `log`: each
    run's `--log` (tensorboard: OUT/<run>/tensorboard)."""
    preset = preset or default_preset(dataset)
    if preset not in PRESETS:
        raise vitx.VitxError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    out = Path(out)
    finished = finished_finetune(with_finetune) if with_finetune else None
    if finished:  # checked before hours of training, like the name of a network to fine-tune
        trained_on = json.loads(finished.with_suffix(".json").read_text()).get("dataset")
        if trained_on != dataset:
            raise vitx.VitxError(f"{with_finetune} was fine-tuned on {trained_on}, not on {dataset}")
    elif with_finetune:
        resolve_source(with_finetune)
    configs = study_configs(dataset, preset, out, data_dir, device, download,
                            finetune=None if finished else with_finetune, finetune_checkpoint=finetune_checkpoint,
                            finetune_pretrained=finetune_pretrained, log=log)
    results = {}
    for name, config in configs.items():
        results[name] = _summary(train(config, resume=True, progress=progress))
    models = {name: load_model_file(out / name / "model.safetensors") for name in configs if name != "finetune"}
    if with_finetune:
        models["finetune"] = load_model_file(finished or out / "finetune" / "model.safetensors")
        results["finetune"] = _summary(models["finetune"].vitx_meta["history"])
    teacher = models.pop("teacher")

    test = load_split(dataset, False, data_dir, download)
    test.transform = None  # PIL images: each model preprocesses them with its own data config
    generator = torch.Generator().manual_seed(0)
    picks = torch.randperm(len(test), generator=generator)[:max(num_images, statistics_images)].tolist()
    items = [test[i] for i in picks]  # each image decoded once
    images = [x for x, _ in items]
    labels = [int(y) for _, y in items]
    from .study_report import write_study_report  # matplotlib and the inspect sections: only when reporting

    write_study_report(out, dataset, preset, results, models, teacher, images, labels,
                       dataset_info(dataset).classes, num_images)
    return results
