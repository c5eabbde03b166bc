"""`vitx evaluate`: faithfulness of several methods on a labelled dataset or image folder."""
import json

import click

from ..baselines import BASELINES, DEFAULT_BASELINE
from ..datasets import DATASET_NAMES
from ..errors import VitxError
from ..evaluate.confidence import MAX_RESAMPLES
from ..evaluate.cost import DEFAULT_BUDGET
from .checks import MAX_BATCH, MAX_WORKERS, model_and_checkpoint, out_folder, positive, within
from .method_options import given_options, method_option_flags, per_method
from .options import (
    DEFAULT_MODEL, batch_size_option, checkpoint_option, device_option, model_option, out_option,
)


def _folder_dataset(folder, net, config):
    """Class sub-folders labelled by their names (vitx.evaluate.folders)."""
    from ..evaluate.folders import LabelledFolder, model_classes
    from ..inputs import image_transform

    transform = image_transform(config)
    count, names = model_classes(net, config)
    return LabelledFolder(folder, lambda image: transform(image)[0], names, count)


def draw_curves(results, path):
    """One matplotlib panel per test; every method a line, random in grey (vitx.inspect.figures)."""
    from ..imaging import save_png
    from ..inspect.figures import evaluation_curves

    save_png(path, evaluation_curves(results))


def _cell(result, key) -> str:
    """An AUC, with its bootstrap interval when there is one."""
    interval = result.get("interval", {}).get(key)
    return f"{result['auc'][key]:.4f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def _priced(net, probe, names, options, limit, main):
    """(the methods to run, {method: forward-equivalents per image}): each method's cost counted
    on one image (vitx.evaluate.cost), printed before the run, and those over `limit` left out."""
    from ..evaluate.cost import describe, method_costs, within_budget

    if limit is not None and not limit > 0:
        raise VitxError(f"--budget must be a positive number of forward-equivalents, got {limit:g}")
    costs = method_costs(net, probe.unsqueeze(0), names, options, limit)
    kept, left = within_budget(costs, limit) if limit is not None else (list(names), [])
    if main:
        click.echo(f"note: cost per image in forward-equivalents (counted on one image; a backward counts as two): "
                   f"{describe({m: costs[m] for m in kept})}"
                   + (f"; left out by the budget of {limit:g}: {describe({m: costs[m] for m in left}, limit)}"
                      if left else ""), err=True)
    if not kept:
        raise VitxError(f"no method fits a budget of {limit:g} forward-equivalents per image: "
                        f"{describe(costs, limit)}")
    return kept, costs


def _cost(cost) -> str:
    """Time per image relative to a plain forward ('-' for the random map)."""
    return "-" if cost is None else f"{cost['cost']:.1f}x"


@click.command("evaluate")
@model_option()
@checkpoint_option()
@click.option("--dataset", default=None, type=click.Choice(DATASET_NAMES), help="Test split of a dataset.")
@click.option("--images", "folder", type=click.Path(), help="Or a folder with one sub-folder of images per class.")
@click.option("--methods", default=None,
              help="Comma-separated methods [default: every registered method within --budget].")
@click.option("--budget", type=float, default=None,
              help="Forward-equivalents per image a method may cost, counted on one image before the run (a "
              f"backward counts as two); methods over it are left out [default: {DEFAULT_BUDGET:g} without --methods].")
@click.option("--limit", "--n", "count", default=1000, show_default=True,
              help="Number of images (a seeded random subset; --n: the same).")
@click.option("--baseline", "--protocol", "baseline", default=DEFAULT_BASELINE, show_default=True,
              type=click.Choice(BASELINES + ("road",)),
              help="What removed patches become (each image's mean colour, the dataset mean, black, blur, noise; "
              "also the baseline of every method that takes one: integrated_gradients, occlusion, rise, shapley), "
              "or `road`: "
              "ROAD's noisy linear imputation from the kept pixels (Rong et al. 2022; a sparse solve per image and "
              "step; the methods keep their own baselines).")
@click.option("--bootstrap", default=0, show_default=True,
              help="Resamples of a percentile bootstrap over images: a 95 % interval beside each AUC (0: none).")
@batch_size_option
@click.option("--seed", default=0, show_default=True)
@click.option("--data-dir", type=click.Path())
@device_option
@click.option("--workers", default=2, show_default=True, help="DataLoader processes decoding images (0: none).")
@out_option("vitx-eval")
@click.option("--masks", type=click.Path(), help="Localisation instead: a folder with images/ and masks/, "
              "or gtsegs_ijcv.mat (pixel accuracy, mIoU, mAP, pointing game).")
@click.option("--sanity", is_flag=True, help="Also run the cascading model-randomisation sanity check "
              "(Adebayo et al. 2018) on the same images: sanity.json/.md/.png.")
@method_option_flags(reserved=("baseline", "seed", "masks"))
def evaluate_command(model, checkpoint, dataset, folder, methods, budget, count, baseline, bootstrap, batch_size, seed,
                     data_dir, device, workers, out_dir, sanity, masks=None, **method_flags):
    """Rank explanation methods by faithfulness (perturbation and deletion/insertion AUCs).

    Under torchrun the batches are dealt to the ranks and rank 0 writes one result, equal to
    a single process's (see docs/howto/datasets-torchrun.md)."""
    import torch

    from ..batches import batch_loader
    from ..distributed import batch_plan, gather_to_main, init_world, my_batch_ids, rank_device
    from ..evaluate.metrics import evaluate_methods
    from ..models import load_model
    from ..registry import data_config, get_explainer
    from ..markdown import markdown_table

    from ..attribution.api import list_methods

    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else list(list_methods())
    for name in names:
        get_explainer(name)
    given = given_options(method_flags)
    options = per_method(given, names)
    positive(count, "--limit")
    if not 0 <= bootstrap <= MAX_RESAMPLES:
        raise VitxError(f"--bootstrap must be 0 (none) or a number of resamples up to {MAX_RESAMPLES}, got {bootstrap}")
    within(workers, "--workers", 0, MAX_WORKERS)
    within(batch_size, "--batch-size", 1, MAX_BATCH)
    model, checkpoint = model_and_checkpoint(model, checkpoint, DEFAULT_MODEL)
    if masks:
        from .localisation import localisation_command

        return localisation_command(model, checkpoint, device, masks, names, count, batch_size, out_folder(out_dir),
                                    options)
    if (dataset is None) == (folder is None):
        raise VitxError("give exactly one of --dataset NAME or --images FOLDER")
    world = init_world(device)
    out = out_folder(out_dir) if world.is_main else None
    net = load_model(model, checkpoint=checkpoint, device=rank_device(world, device))
    if dataset:
        from vitx.datasets import load_split

        data = load_split(dataset, train=False, data_dir=data_dir, augment=False)
    else:
        data = _folder_dataset(folder, net, data_config(net))
    if len(data) == 0:
        raise VitxError("no images to evaluate")
    indices = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    limit = budget if budget is not None else (None if methods else DEFAULT_BUDGET)
    names, forward_costs = _priced(net, data[indices[0]][0], names, options, limit, world.is_main)
    options = {name: options[name] for name in names}
    plan = batch_plan(indices, batch_size)
    mine = my_batch_ids(len(plan), world)
    skipped, costs = [], {}
    kept = []  # one process with --sanity: the decoded images are kept for it instead of read again

    def batches():
        for batch in batch_loader(data, [plan[i] for i in mine], workers, skipped):
            if sanity and not world.distributed and batch.indices:
                kept.append(batch.pixels)
            yield batch.pixels, batch.labels

    results = evaluate_methods(net, batches(), names, baseline=baseline, seed=seed, progress=world.is_main,
                               options=options, costs=costs, batch_ids=mine, world=world, bootstrap=bootstrap)
    skipped = [error for rank_skipped in gather_to_main(skipped, world) or [] for error in rank_skipped]
    if not world.is_main:
        return
    evaluated = len(indices) - len(skipped)
    (out / "results.json").write_text(json.dumps({
        "n": evaluated, "baseline": baseline, "bootstrap": bootstrap, "seed": seed, "batch_size": batch_size,
        "budget": limit, "options": given, "results": results, "costs": costs,
        "forward_equivalents": {m: c for m, c in forward_costs.items() if c != float("inf")}}, indent=1))
    draw_curves(results, out / "curves.png")
    header = ["method", "pos. acc AUC (lower)", "neg. acc AUC (higher)", "pos. prob AUC (lower)", "neg. prob AUC (higher)",
              "deletion (lower)", "insertion (higher)", "forward-equivalents", "time vs. forward"]
    keys = ["positive_accuracy_auc", "negative_accuracy_auc", "positive_probability_auc", "negative_probability_auc",
            "deletion_auc", "insertion_auc"]
    table = markdown_table(header, [[name] + [_cell(result, k) for k in keys]
                                    + [f"{forward_costs[name]:g}" if name in forward_costs else "-", _cost(costs.get(name))]
                                    for name, result in results.items()])
    intervals = f", 95 % bootstrap intervals ({bootstrap} resamples)" if bootstrap else ""
    if bootstrap and evaluated == 1:
        click.echo("note: with one image every bootstrap resample is that image, so each interval is a single point",
                   err=True)
    (out / "results.md").write_text(f"{evaluated} images, protocol {baseline}{intervals}, seed {seed}\n\n{table}\n")
    click.echo(table)
    click.echo(f"-> {out / 'results.json'}, {out / 'curves.png'}")
    if sanity:
        from ..evaluate.sanity import sanity_check
        from ..inspect.figures import write_sanity

        if world.distributed:  # rank 0 holds only its own batches: read every image of the plan
            kept = [b.pixels for b in batch_loader(data, plan, workers) if b.indices]
        pixels = torch.cat(kept)
        result = sanity_check(net, pixels, names, seed=seed, batch_size=batch_size, progress=True, options=options)
        click.echo(markdown_table(result.header(), result.rows()))
        click.echo("-> " + ", ".join(map(str, write_sanity(result, out))))
    if skipped:
        more = f" and {len(skipped) - 1} more (see the warnings)" if len(skipped) > 1 else ""
        raise VitxError(f"skipped {len(skipped)} unreadable image(s): {skipped[0]}{more}; "
                        f"the results cover the other {evaluated}")
