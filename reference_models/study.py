"""The three-way study: baseline ViT vs. ViT + classic KD vs. DeiT (distillation token),
all from scratch with the same CNN teacher; accuracy table and attention-map figure.
With `with_finetune`, a pretrained ViT fine-tuned on the same data joins them as a fourth
student (what pretraining does to attention).

Presets: `smoke` (a subset, a few epochs: minutes on a 2-core CPU) and `full` (the recipe
for one GPU). Each run lives in OUT/<name>/ and is reused (resumed) when present, so an
interrupted study continues where it stopped.
"""
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

import vitx
from vitx.inspect.inspection import inspect_models
from vitx.inspect.report import markdown_table

from .checkpoint import load_model_file
from vitx.datasets import dataset_info, load_split
from .finetune import FinetuneConfig, resolve_source
from .train import TrainConfig, train

PRESETS = {
    "smoke": dict(epochs=3, train_limit=12000, test_limit=2000, batch_size=128, teacher_epochs=2, augment="flip",
                  vit=dict(dim=64, depth=4, heads=4, patch_size=4, mlp_ratio=2.0, local_ffn=True)),
    "full": dict(epochs=100, train_limit=0, test_limit=0, batch_size=128, teacher_epochs=30,
                 vit=dict(dim=192, depth=9, heads=12, patch_size=4, mlp_ratio=2.0, drop_path=0.1, local_ffn=True)),
}
STUDENTS = ("baseline", "kd", "deit")
# The fine-tuned column: a few epochs at the pretrained network's resolution (on one GPU;
# the smoke preset's subset is small because a 224 px network is slow on a CPU).
FINETUNE_PRESETS = {
    "smoke": dict(epochs=1, train_limit=2000, batch_size=32, warmup_epochs=0.2, augment="flip"),
    "full": dict(epochs=10, train_limit=0, batch_size=128, warmup_epochs=1.0),
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
                  finetune_checkpoint=None, finetune_pretrained=True):
    settings = dict(PRESETS[preset])
    teacher_epochs = settings.pop("teacher_epochs")
    base = TrainConfig(dataset=dataset, data_dir=data_dir, device=device, download=download, **settings)
    out = Path(out)
    configs = {"teacher": replace(base, mode="teacher", epochs=teacher_epochs, out=str(out / "teacher"), lr=3e-3,
                                  augment="default")}
    teacher_path = str(out / "teacher" / "model.safetensors")
    for mode in STUDENTS:
        configs[mode] = replace(base, mode=mode, out=str(out / mode), teacher=teacher_path if mode != "baseline" else None)
    if finetune:
        configs["finetune"] = FinetuneConfig(
            dataset=dataset, data_dir=data_dir, device=device, download=download, out=str(out / "finetune"),
            test_limit=settings["test_limit"], model=finetune, checkpoint=finetune_checkpoint,
            pretrained=finetune_pretrained, **FINETUNE_PRESETS[preset])
    return configs


def attention_figure(models, images, labels, class_names, path, cell=84):
    """Rows: each test image; columns: the image, then each model's maps side by side."""
    columns = [("input", None, None, None)]
    for name, model in models.items():
        columns += [(f"{name} rollout", name, "rollout", "cls"), (f"{name} grad", name, "grad_rollout", "cls")]
        if name == "deit":
            columns.append(("deit dist rollout", name, "rollout", "dist"))
    maps = {}
    for title, name, method, token in columns[1:]:
        maps[title] = vitx.explain(models[name], images, method=method, token=token, target=labels)
    header = 28
    canvas = np.full((header + cell * len(images), cell * len(columns), 3), 255, np.uint8)
    for c, (title, *_rest) in enumerate(columns):
        cv2.putText(canvas, title[:16], (c * cell + 2, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1, cv2.LINE_AA)
        for r in range(len(images)):
            if title == "input":
                any_exp = next(iter(maps.values()))
                tile = cv2.resize(any_exp.views[r], (cell, cell), interpolation=cv2.INTER_NEAREST)
                cv2.putText(tile, class_names[int(labels[r])][:10], (2, cell - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (255, 0, 0), 1)
            else:
                exp = maps[title]
                view = cv2.resize(exp.views[r], (cell, cell), interpolation=cv2.INTER_NEAREST)
                tile = vitx.imaging.overlay(view, exp.maps[r].numpy())
            canvas[header + r * cell: header + (r + 1) * cell, c * cell:(c + 1) * cell] = tile
    vitx.imaging.save_png(path, canvas)
    return canvas


def _summary(history):
    return {"test_accuracy": history[-1]["test_accuracy"], "epochs": history[-1]["epoch"],
            "train_seconds": round(sum(h["seconds"] for h in history), 1)}


def run_study(dataset="fashion_mnist", preset="smoke", out="study", data_dir=None, device="cpu",
              download=True, num_images=6, statistics_images=64, progress=True, with_finetune=None,
              finetune_checkpoint=None, finetune_pretrained=True):
    """`with_finetune`: a pretrained network to fine-tune here (timm name, hf:ORG/NAME, a
    save_pretrained folder) or a finished `vitx train --mode finetune` run (folder or model file)."""
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
                            finetune_pretrained=finetune_pretrained)
    results = {}
    for name, config in configs.items():
        results[name] = _summary(train(config, resume=True, progress=progress))
    students = dict.fromkeys(STUDENTS, None)
    if with_finetune:
        path = finished or out / "finetune" / "model.safetensors"
        finetuned = load_model_file(path)
        results["finetune"] = _summary(finetuned.vitx_meta["history"])
        students["finetune"] = finetuned
    baseline = results["baseline"]["test_accuracy"]
    for name in ("kd", "deit", "finetune"):
        if name in results:
            results[name]["beats_baseline"] = results[name]["test_accuracy"] > baseline
    (out / "results.json").write_text(json.dumps({"dataset": dataset, "preset": preset, "results": results}, indent=1))
    header = ["model", "test accuracy", "epochs", "train s", "beats baseline"]
    rows = [[name, f"{r['test_accuracy']:.4f}", r["epochs"], r["train_seconds"],
             {True: "yes", False: "no"}.get(r.get("beats_baseline"), "-")] for name, r in results.items()]

    test = load_split(dataset, False, data_dir, download)
    test.transform = None  # PIL images: each model preprocesses them with its own data config
    generator = torch.Generator().manual_seed(0)
    picks = torch.randperm(len(test), generator=generator)[:max(num_images, statistics_images)].tolist()
    items = [test[i] for i in picks]  # each image decoded once
    images = [x for x, _ in items]
    labels = [int(y) for _, y in items]
    students = {name: model or load_model_file(out / name / "model.safetensors") for name, model in students.items()}
    figure = attention_figure(students, images[:num_images], labels[:num_images], dataset_info(dataset).classes,
                              out / "attention_maps.png")

    def study_section(report):
        section = report.section("Study results")
        section.text(f"{dataset}, preset {preset}: test accuracy of the teacher and the three students"
                     + (", and of the fine-tuned pretrained ViT (its input is resized to its own resolution, so its "
                        "attention distances are in its own input pixels)." if "finetune" in students else "."))
        section.table(header, rows)
        section.image(figure, "Rollout and grad_rollout of each student (and DeiT's dist token"
                      + (", and the fine-tuned model" if "finetune" in students else "") + ") on the same test images",
                      "study-attention-maps")

    report = inspect_models(students, images, out / "report", show=num_images, extra=study_section,
                            title=f"vitx study: {dataset} ({preset})")
    (out / "results.md").write_text(f"# {dataset} study ({preset})\n\n{markdown_table(header, rows)}\n\n"
                                    f"Report (attention of the {len(students)} models, side by side): {report}\n")
    return results
