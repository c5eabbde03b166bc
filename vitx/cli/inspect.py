"""`vitx inspect`: the HTML report of `vitx.inspection` from the command line."""
from pathlib import Path

import click

from ..datasets import DATASET_NAMES
from ..errors import VitxError
from ..imaging import IMAGE_SUFFIXES
from .method_options import given_options, method_option_flags, per_method
from .options import (
    DEFAULT_MODEL, batch_size_option, checkpoint_option, device_option, model_option, out_option,
)


def expand_images(paths):
    """Files as given; folders -> their image files, sorted, nested folders (class-folder
    trees) included, hidden files left out."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        else:
            found.append(path)  # read_image reports a missing or unreadable file
    return [str(p) for p in found]


def dataset_sample(name, count, seed, data_dir):
    """A seeded random sample of a dataset's test split, as PIL images: each model then
    preprocesses them with its own data config."""
    import torch

    from vitx.datasets import load_split

    data = load_split(name, train=False, data_dir=data_dir, augment=False)
    data.transform = None
    picks = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    return [data[i][0] for i in picks]


@click.command("inspect")
@click.argument("images", nargs=-1, type=click.Path())
@model_option(multiple=True)
@checkpoint_option(multiple=True)
@click.option("--dataset", default=None, type=click.Choice(DATASET_NAMES),
              help="Add a sample of this dataset's test split (for the statistics).")
@click.option("--limit", "--n", "count", default=64, show_default=True, help="Size of the dataset sample.")
@click.option("--methods", default="raw_attention,rollout,grad_rollout,chefer2021", show_default=True)
@click.option("--show", default=4, show_default=True, help="Images with per-image figures.")
@click.option("--seed", default=0, show_default=True)
@click.option("--data-dir", type=click.Path())
@device_option
@out_option("vitx-report")
@click.option("--interactive", is_flag=True, help="Embed the attention explorer (per patch, layer, head, method) "
              "for the --show images.")
@click.option("--sanity", is_flag=True, help="Add the cascading-randomisation sanity check of every method.")
@batch_size_option
@method_option_flags(reserved=("seed",))
def inspect_command(images, model_names, checkpoints, dataset, count, methods, show, seed, data_dir, device, out_dir,
                    interactive, sanity, batch_size, **method_flags):
    """Write an HTML report (and its PNGs) of what the model(s) learned and where they look."""
    from ..imaging import read_image
    from ..inspect.inspection import inspect_models
    from ..models import load_model, resolve_device
    from ..registry import get_explainer
    from .checks import MAX_BATCH, model_and_checkpoint, out_folder, positive, within

    names = [m.strip() for m in methods.split(",") if m.strip()]
    for name in names:
        get_explainer(name)
    options = per_method(given_options(method_flags), names)
    positive(count, "--limit")
    positive(show, "--show")
    within(batch_size, "--batch-size", 1, MAX_BATCH)
    paths = expand_images(images)
    if not paths and not dataset:
        raise VitxError("give image files or folders, or --dataset NAME")
    if paths and dataset:
        raise VitxError("give either images or --dataset, not both")
    if checkpoints and len(checkpoints) != max(len(model_names), 1):
        raise VitxError(f"{len(checkpoints)} --checkpoint for {len(model_names)} --model: give one per model, in order")
    pairs = [model_and_checkpoint(m, c, DEFAULT_MODEL)
             for m, c in zip(model_names or [None], checkpoints or [None] * max(len(model_names), 1))]
    device = resolve_device(device)
    out = out_folder(out_dir)
    if len(paths) == 1:  # one image: its own error, nothing to skip
        read_image(paths[0])
    paths, failed = _readable(paths)
    if images and not paths:
        raise VitxError(f"none of the {len(failed)} image(s) could be read: {failed[0]}")
    models = {_label(m): load_model(m, checkpoint=c, device=device) for m, c in pairs}
    inputs = dataset_sample(dataset, count, seed, data_dir) if dataset else paths
    path = inspect_models(models, inputs, out, methods=names, show=show, interactive=interactive, sanity=sanity,
                          progress=True, options=options, batch_size=batch_size)
    click.echo(f"report: {path}")
    if failed:
        raise VitxError(f"skipped {len(failed)} unreadable image(s): {failed[0]}"
                        + (f" and {len(failed) - 1} more (see the warnings)" if len(failed) > 1 else ""))


def _label(model: str) -> str:
    path = Path(model)
    return path.stem if path.suffix else path.name if path.is_dir() else model


def _readable(paths):
    """(paths that read as images, messages for the others): one bad file is skipped with
    a warning instead of costing the whole report."""
    from ..imaging import read_image

    good, failed = [], []
    for path in paths:
        try:
            read_image(path)
            good.append(path)
        except VitxError as exc:
            click.echo(f"warning: skipped {path}: {exc}", err=True)
            failed.append(str(exc))
    return good, failed
