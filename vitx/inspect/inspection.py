"""`inspect_models`: one HTML report of what one or more ViTs learned and where they look.

Sections (each skipped, with a note saying why, when a model lacks what it needs, e.g. a
model with rotary positions has no position embedding to show):
overview, method maps, attention per layer and head, patch-embedding filters, patch-embedding
activations, position-embedding similarity, attention distance and entropy, training curves.
With several models, the per-layer statistics share one plot so they can be compared.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from torch import nn

from . import figures

from . import views
from ..attribution.api import explain
from ..batches import DEFAULT_BATCH_SIZE
from ..errors import VitxError
from ..imaging import read_image
from ..registry import find_adapter, get_registry
from .report import Report

SECTIONS = ("Overview", "Method maps", "Attention per layer and head", "Patch-embedding filters",
            "Patch-embedding activations", "Position-embedding similarity", "Attention distance and entropy",
            "Training curves")
DEFAULT_METHODS = ("raw_attention", "rollout", "grad_rollout", "chefer2021")


def _history(model) -> Optional[List[dict]]:
    """A reference checkpoint carries its training history in `vitx_meta`."""
    history = (getattr(model, "vitx_meta", None) or {}).get("history")
    return history if history and all("train_loss" in h and "test_accuracy" in h for h in history) else None


def _skip(section, name, exc):
    section.text(f"{name}: not shown ({exc})", "note")


def _overview(report, models, images):
    rows = []
    for name, model in models.items():
        meta = getattr(model, "vitx_meta", None) or {}
        accuracy = meta.get("test_accuracy")
        rows.append([name, type(model).__name__, find_adapter(model).name,
                     f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M",
                     f"{100 * accuracy:.2f} %" if accuracy is not None else "-"])
    section = report.section(SECTIONS[0])
    section.text(f"{len(models)} model(s), {len(images)} image(s).")
    section.table(["model", "class", "adapter", "parameters", "test accuracy (checkpoint)"], rows)


def _method_maps(report, models, images, methods, show, options, batch_size):
    section = report.section(SECTIONS[1])
    section.text("Each method's map for the predicted class, over the input the model saw "
                 "(bright = relevant; every map scaled to its own maximum).")
    for name, model in models.items():
        explanations = {}
        for method in methods:
            try:
                explanations[method] = explain(model, images[:show], method=method, batch_size=batch_size,
                                               **options.get(method, {}))
            except VitxError as exc:
                _skip(section, f"{name} {method}", exc)
        if not explanations:
            continue
        first = next(iter(explanations.values()))
        if "dist" in first.layout.prefix and "rollout" in methods:
            explanations["rollout (dist token)"] = explain(model, images[:show], method="rollout", token="dist",
                                                           batch_size=batch_size)
        section.heading(name)
        for i in range(len(first)):
            top = first.predictions[i][0]
            label = top.name or str(top.index)
            row = figures.method_row(first.views[i], {m: e.maps[i].numpy() for m, e in explanations.items()})
            source = Path(first.sources[i]).name if first.sources and first.sources[i] else f"image {i}"
            section.image(row, f"{name} on {source}: predicted {label} ({100 * top.probability:.1f} %)",
                          f"{name}-methods-{i}")


def _per_model(section, models, figures_of):
    """Add each model's figures to `section`; `figures_of(name, model)` yields
    (image, caption, file name). A model the view does not apply to gets a note saying why."""
    for name, model in models.items():
        try:
            drawn = list(figures_of(name, model))
        except VitxError as exc:
            _skip(section, name, exc)
            continue
        for image, caption, filename in drawn:
            section.image(image, caption, filename)


def _attention(report, models, images):
    section = report.section(SECTIONS[2])
    section.text("Attention from each prefix token (cls; dist for a distilled model) to every patch, "
                 "a row per layer and a column per head, for the first image; a hierarchical model (Swin, PiT, "
                 "PVTv2, ...) by stage, each layer over its keys (its stage's grid, or its pooled keys).")

    def draw(name, model):
        try:
            result = views.attention_maps(model, images[:1])
        except views.StagedModel:
            yield from _stage_figures(name, views.stage_attention(model, images[:1]))
            return
        for token, maps in result.maps.items():
            yield (figures.attention_grid(maps.numpy(), result.view),
                   f"{name}: attention from the {token} token (layers x heads)", f"{name}-attention-{token}")

    _per_model(section, models, draw)


def _stage_figures(name, result):
    """A hierarchical model (Swin, PiT, PVTv2, ...), one figure per stage: each layer's heads on
    its keys' grid (the stage's, or its pooled keys'), carried to the first grid, from the mean
    of the stage's tokens (the pooled token a hierarchical head reads)."""
    stages = result.stages
    for stage, grid in enumerate(stages.grids):
        layers = [number for number, s in enumerate(stages.stage) if s == stage]
        maps = [result.upsampled(number).numpy() for number in layers]
        if len({m.shape[0] for m in maps}) != 1:
            continue  # a stage whose layers differ in heads has no layers x heads grid
        yield (figures.attention_grid(maps, result.view, layer_labels=[f"L{number}" for number in layers]),
               f"{name}: stage {stage + 1} ({grid[0]}x{grid[1]} tokens), attention from the mean of its tokens "
               "(layers x heads)", f"{name}-attention-stage-{stage + 1}")


def _filters(report, models):
    section = report.section(SECTIONS[3])
    section.text("The first principal components of the patch projection's filters (mid-grey = 0) "
                 "and the share of the filters' variance each explains.")

    def draw(name, model):
        components, variance = views.patch_filters(model)
        yield (figures.filters_figure(components.numpy(), variance.numpy()),
               f"{name}: principal components of the patch-embedding filters", f"{name}-filters")

    _per_model(section, models, draw)


def _activations(report, models, images):
    section = report.section(SECTIONS[4])
    section.text("The patch projection's output on the first image: the channels that vary most across it.")

    def draw(name, model):
        activations, view = views.patch_activations(model, images[:1])
        yield figures.activations_figure(activations.numpy(), view), f"{name}: patch-embedding activations", \
            f"{name}-activations"

    _per_model(section, models, draw)


def _positions(report, models):
    section = report.section(SECTIONS[5])
    section.text("Cosine similarity of each patch position's embedding to every other position "
                 "(tile (row, column) = one position; yellow = similar, blue = opposite).")

    def draw(name, model):
        embedding, grid = views.position_embedding(model)
        yield (figures.position_similarity_figure(views.position_similarity(embedding, grid).numpy()),
               f"{name}: position-embedding similarity ({grid[0]}x{grid[1]} grid)", f"{name}-positions")

    _per_model(section, models, draw)


def _uniform_line(values):
    """The uniform-attention reference, drawn only when it is the same for every model
    (distance: same grid and pixels per patch; entropy: same number of tokens)."""
    return {"uniform": next(iter(values))} if len(values) == 1 else None


def _statistics(report, models, images, batch_size):
    section = report.section(SECTIONS[6])
    section.text("Mean attention distance: how far, in input pixels, each head looks from a patch "
                 "(attention-weighted distance between patch centres). Entropy: how spread its attention "
                 "is (0 = one token, log N = uniform). One dot per head, over all images.")
    distance, entropy, rows = {}, {}, []
    uniform_distance, uniform_entropy = set(), set()
    for name, model in models.items():
        try:
            stats = views.attention_statistics(model, images, batch_size=batch_size)
        except VitxError as exc:
            _skip(section, name, exc)
            continue
        distance[name], entropy[name] = stats.distance.numpy(), stats.entropy.numpy()
        for layer in range(stats.distance.shape[0]):
            rows.append([name, layer, float(stats.distance[layer].mean()), float(stats.distance[layer].min()),
                         float(stats.distance[layer].max()), float(stats.entropy[layer].mean()),
                         stats.uniform_distance, stats.uniform_entropy])
        uniform_distance.add(round(stats.uniform_distance, 6))
        uniform_entropy.add(round(stats.uniform_entropy, 6))
    if distance:
        section.image(figures.layer_scatter(distance, "mean attention distance", "pixels",
                                            reference=_uniform_line(uniform_distance)),
                      "Mean attention distance per layer (one dot per head)", "attention-distance")
        section.image(figures.layer_scatter(entropy, "attention entropy", "nats",
                                            reference=_uniform_line(uniform_entropy)),
                      "Attention entropy per layer (one dot per head)", "attention-entropy")
        section.table(["model", "layer", "distance mean (px)", "min head", "max head", "entropy mean (nats)",
                       "uniform distance (px)", "uniform entropy = log N"], rows)


def _curves(report, models):
    section = report.section(SECTIONS[7])
    shown = False
    for name, model in models.items():
        history = _history(model)
        if history:
            section.image(figures.training_curves(history), f"{name}: train loss and test accuracy per epoch",
                          f"{name}-curves")
            shown = True
    if not shown:
        section.text("No model carries a training history (reference checkpoints do).", "note")


SANITY_INTRO = ("Cascading model-parameter randomisation (Adebayo et al. 2018): the model is re-initialised from "
                "the head down to the embeddings; similarity (Spearman, SSIM) of each method's maps to the trained "
                "model's. A method whose maps do not change with the weights fails.")


def _sanity(report, models, images, methods, options, batch_size):
    """Cascading randomisation (vitx.evaluate.sanity) of every method, per model."""
    from ..evaluate.sanity import sanity_check

    section = report.section("Sanity check")
    section.text(SANITY_INTRO)
    for name, model in models.items():
        try:
            result = sanity_check(model, images, methods, batch_size=batch_size, options=options)
        except VitxError as exc:
            _skip(section, name, exc)
            continue
        add_sanity(section, name, result)


def add_sanity(section, name, result):
    """One model's sanity check (a `SanityResult`) in a report section: table and curves."""
    section.heading(name)
    section.table(result.header(), result.rows())
    section.image(figures.sanity_curves(result), f"{name}: similarity to the trained model's maps per step",
                  f"{name}-sanity")


def inspect_models(models: Dict[str, nn.Module], images: Sequence, out, methods: Sequence[str] = DEFAULT_METHODS,
                   title: str = "vitx inspect", show: int = 4, extra=None, interactive: bool = False,
                   sanity: bool = False, progress: bool = False, options: Optional[Dict[str, dict]] = None,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> Path:
    """Write `out`/report.html (+ PNGs) for `models` (name -> module) on `images` (paths,
    PIL images, arrays or a preprocessed tensor). `show`: images with per-image figures;
    the statistics use all of them. `extra(report)` may add sections (the study does).
    `interactive`: add the attention explorer for the first `show` images (JavaScript).
    `sanity`: add the cascading-randomisation sanity check of every method (on all images).
    `progress`: a progress bar per section on stderr (the CLI's). `options`: {method: its
    options}, as `vitx.explain` takes them. `batch_size`: images per forward pass."""
    if not models:
        raise VitxError("no model to inspect")
    if len(images) == 0:
        raise VitxError("no images to inspect")
    for item in images if isinstance(images, (list, tuple)) else ():
        if isinstance(item, (str, Path)):
            read_image(item)  # a missing or unreadable file stops here, not as a skipped section
    registered = get_registry().explainers
    options = options or {}
    methods = [m for m in methods if m in registered]
    report = Report(title, "What the models learned (patch and position embeddings) and where they look "
                           "(attention per layer and head, explanation methods, attention distance).")
    _overview(report, models, images)
    if extra is not None:
        extra(report)
    steps = []
    if interactive:
        from .explorer import add_explorer_section

        steps.append(("explorer", lambda: add_explorer_section(report, models, images[:show], methods,
                                                                      options=options, batch_size=batch_size)))
    steps += [
        ("method maps", lambda: _method_maps(report, models, images, methods, show, options, batch_size)),
        ("attention", lambda: _attention(report, models, images)),
        ("filters", lambda: _filters(report, models)),
        ("activations", lambda: _activations(report, models, images)),
        ("positions", lambda: _positions(report, models)),
        ("statistics", lambda: _statistics(report, models, images, batch_size)),
        ("curves", lambda: _curves(report, models)),
    ]
    if sanity:
        steps.append(("sanity check", lambda: _sanity(report, models, images, methods, options, batch_size)))
    _run_steps(steps, progress)
    return report.write(out)


def _run_steps(steps, progress: bool) -> None:
    """Each section in turn, with a progress bar on stderr naming the one being built (a
    report of several models, or with the sanity check, takes minutes)."""
    import sys

    from tqdm import tqdm

    with tqdm(total=len(steps), desc="inspect", unit="section", file=sys.stderr, disable=not progress,
              leave=False) as bar:
        for label, build in steps:
            bar.set_postfix_str(label)
            build()
            bar.update(1)
