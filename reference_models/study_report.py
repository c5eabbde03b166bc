"""What the study reports once its runs are trained: the comparison table (accuracy,
parameters, time, the distillation's gain), the runs' curves on shared axes, the students'
attention side by side (rollout, grad_rollout and each DeiT's distillation-token map), mean
attention distance per layer and a sanity check, as `results.json`, `results.md` and one
HTML report (matplotlib figures) built on `vitx inspect`'s sections.

Kept apart from `study.py`, which only decides what to train.
"""
import json
from pathlib import Path

import cv2
import numpy as np
import torch

import vitx
from vitx.imaging import save_png
from vitx.inspect import figures
from vitx.inspect.inspection import SANITY_INTRO, add_sanity, inspect_models
from vitx.inspect.views import attention_statistics
from vitx.markdown import markdown_table

SANITY_METHODS = ("rollout", "grad_rollout", "chefer2021")
TILE = 112  # pixels per image in the attention figure (a 28 px digit upscaled, nearest neighbour)
SANITY_IMAGES = 16  # the cascade re-explains every image once per randomised block
HEADER = ["model", "test accuracy", "epochs", "parameters", "train s", "gain over baseline (points)"]


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def comparison(results: dict, models: dict) -> dict:
    """Adds each run's parameter count and, for every run but the teacher and the baseline
    ViT, its gain over the baseline in accuracy points (the distillation's gain for a DeiT)."""
    baseline = results.get("baseline", {}).get("test_accuracy")
    for name, result in results.items():
        result["parameters"] = parameters(models[name])
        if baseline is not None and name not in ("teacher", "baseline"):
            result["gain_over_baseline"] = round(100 * (result["test_accuracy"] - baseline), 2)
            result["beats_baseline"] = result["test_accuracy"] > baseline
    return results


def table_rows(results: dict):
    gain = {True: "+", False: ""}
    return [[name, f"{r['test_accuracy']:.4f}", r["epochs"], f"{r['parameters'] / 1e3:.0f} k", r["train_seconds"],
             f"{gain[r['gain_over_baseline'] >= 0]}{r['gain_over_baseline']:.2f}" if "gain_over_baseline" in r else "-"]
            for name, r in results.items()]


def attention_columns(students: dict):
    """(title, student, method, token) of each column after the input: every student's
    rollout and grad_rollout, and each DeiT's distillation-token rollout."""
    columns = []
    for name, model in students.items():
        columns += [(f"{name} rollout", name, "rollout", "cls"), (f"{name} grad", name, "grad_rollout", "cls")]
        if getattr(model, "dist_token", None) is not None:
            columns.append((f"{name} dist token", name, "rollout", "dist"))
    return columns


def attention_figure(students: dict, images, labels, class_names):
    """Rows: test images; columns: the input, then each column of `attention_columns` as an
    overlay. Returns (RGB figure, column titles)."""
    columns = attention_columns(students)
    maps = {title: vitx.explain(students[name], images, method=method, token=token, target=labels)
            for title, name, method, token in columns}
    views = [cv2.resize(view, (TILE, TILE), interpolation=cv2.INTER_NEAREST) for view in next(iter(maps.values())).views]
    rows = [[views[r]] + [vitx.imaging.overlay(views[r], maps[title].maps[r].numpy()) for title, *_ in columns]
            for r in range(len(images))]
    titles = ["input"] + [title for title, *_ in columns]
    return figures.image_table(rows, titles, [f"label {class_names[int(y)]}" for y in labels]), titles


def dist_token_agreement(model, images) -> float:
    """Mean Pearson correlation between the cls and the dist token's rollout over `images`:
    1 when the distillation token looks where the class token looks."""
    cls = vitx.explain(model, images, method="rollout", token="cls").maps.flatten(1)
    dist = vitx.explain(model, images, method="rollout", token="dist").maps.flatten(1)
    cls, dist = cls - cls.mean(1, keepdim=True), dist - dist.mean(1, keepdim=True)
    correlation = (cls * dist).sum(1) / (cls.norm(dim=1) * dist.norm(dim=1)).clamp_min(1e-12)
    return round(float(correlation.mean()), 4)


def explanation_results(students: dict, images) -> dict:
    """Per student: mean attention distance per layer (pixels, heads averaged), the sanity
    check's result, and for a DeiT how far its two tokens' maps agree."""
    from vitx.evaluate.sanity import sanity_check

    out = {}
    for name, model in students.items():
        entry = out[name] = {}
        try:
            stats = attention_statistics(model, images)
            entry.update(attention_distance_per_layer=[round(float(v), 3) for v in stats.distance.mean(1)],
                         uniform_attention_distance=round(stats.uniform_distance, 3))
        except vitx.VitxError as exc:  # a model whose attention vitx cannot read this way: said, not fatal
            entry["attention_distance_skipped"] = str(exc)
        try:
            entry["sanity"] = sanity_check(model, images[:SANITY_IMAGES], SANITY_METHODS)
        except vitx.VitxError as exc:  # e.g. a fine-tuned network without a block list to randomise
            entry["sanity_skipped"] = str(exc)
        if getattr(model, "dist_token", None) is not None:
            entry["cls_dist_rollout_correlation"] = dist_token_agreement(model, images)
    return out


def write_study_report(out: Path, dataset: str, preset: str, results: dict, students: dict, teacher, images, labels,
                       class_names, num_images: int) -> Path:
    """results.json, results.md, attention_maps.png, curves.png and report/report.html in `out`."""
    comparison(results, {**students, "teacher": teacher})
    histories = {name: model.vitx_meta["history"] for name, model in {"teacher": teacher, **students}.items()}
    curves = figures.compared_curves(histories)
    save_png(out / "curves.png", curves)
    attention, titles = attention_figure(students, images[:num_images], labels[:num_images], class_names)
    save_png(out / "attention_maps.png", attention)
    explained = explanation_results(students, images)
    rows = table_rows(results)

    def study_section(report):
        section = report.section("Study results")
        section.text(f"{dataset}, preset {preset}: test accuracy, size and training time of the CNN teacher and "
                     "each student; the gain is the accuracy over the ViT trained without a teacher, in points.")
        section.table(HEADER, rows)
        section.image(curves, "Train loss and test accuracy per epoch of every run", "study-curves")
        section.image(attention, "Rollout and grad_rollout of each student on the same test images, and each DeiT's "
                      "distillation-token map", "study-attention-maps")
        section.table(["student", "mean attention distance per layer (px)", "cls / dist rollout correlation"],
                      [[name, ", ".join(f"{d:.1f}" for d in e.get("attention_distance_per_layer", [])) or "-",
                        e.get("cls_dist_rollout_correlation", "-")] for name, e in explained.items()])
        sanity = report.section("Sanity check")
        sanity.text(SANITY_INTRO + f" ({SANITY_IMAGES} test images.)")
        for name, entry in explained.items():
            if "sanity" in entry:
                add_sanity(sanity, name, entry["sanity"])
            else:
                sanity.text(f"{name}: not checked ({entry['sanity_skipped']})", "note")

    report = inspect_models(students, images, out / "report", show=num_images, extra=study_section,
                            title=f"vitx study: {dataset} ({preset})")
    for entry in explained.values():
        if "sanity" in entry:
            entry["sanity"] = entry["sanity"].as_dict()
    (out / "results.json").write_text(json.dumps(
        {"dataset": dataset, "preset": preset, "results": results, "explanations": explained,
         "attention_figure_columns": titles, "report": str(report)}, indent=1, default=_plain))
    (out / "results.md").write_text(f"# {dataset} study ({preset})\n\n{markdown_table(HEADER, rows)}\n\n"
                                    f"Report (attention of the {len(students)} models, side by side): {report}\n")
    return report


def _plain(value):
    """numpy / torch scalars and arrays in the sanity results, as JSON numbers and lists."""
    if isinstance(value, (np.generic, torch.Tensor, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
