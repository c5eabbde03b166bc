"""`vitx inspect`: the HTML report of `vitx.inspection` from the command line."""
from pathlib import Path

import click

from ..errors import VitxError
from .options import DEFAULT_MODEL

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def expand_images(paths):
    """Files as given; folders -> their image files, sorted."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(path)  # read_image reports a missing or unreadable file
    return [str(p) for p in found]


def dataset_sample(name, count, seed, data_dir):
    """A seeded random sample of a dataset's test split, as PIL images: each model then
    preprocesses them with its own data config."""
    import torch

    from vitx.reference_models.data import load_split

    data = load_split(name, train=False, data_dir=data_dir, augment=False)
    data.transform = None
    picks = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    return [data[i][0] for i in picks]


def _model_label(name):
    """fashion_vit -> fashion_vit; runs/vit/model.safetensors -> model; a run folder runs/ft -> ft."""
    path = Path(name)
    return path.stem if path.suffix else path.name if path.is_dir() else name


@click.command("inspect")
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--model", "-m", "model_names", multiple=True,
              help="Model name or checkpoint path; repeat to compare models [default: the CLI default].")
@click.option("--dataset", default=None, type=click.Choice(["fashion_mnist", "mnist", "cifar10"]),
              help="Add a sample of this dataset's test split (for the statistics).")
@click.option("--n", "count", default=64, show_default=True, help="Size of the dataset sample.")
@click.option("--methods", default="raw_attention,rollout,grad_rollout,chefer2021", show_default=True)
@click.option("--show", default=4, show_default=True, help="Images with per-image figures.")
@click.option("--seed", default=0, show_default=True)
@click.option("--data-dir", type=click.Path())
@click.option("--device", default="auto", show_default=True)
@click.option("--out", "out_dir", default="vitx-report", show_default=True, type=click.Path())
def inspect_command(images, model_names, dataset, count, methods, show, seed, data_dir, device, out_dir):
    """Write an HTML report (and its PNGs) of what the model(s) learned and where they look."""
    from ..inspect.inspection import inspect_models
    from ..models import load_model
    from ..registry import get_explainer

    names = [m.strip() for m in methods.split(",") if m.strip()]
    for name in names:
        get_explainer(name)
    paths = expand_images(images)
    if not paths and not dataset:
        raise VitxError("give image files or folders, or --dataset NAME")
    if paths and dataset:
        raise VitxError("give either images or --dataset, not both")
    models = {_model_label(m): load_model(m, device=device)
              for m in (model_names or [DEFAULT_MODEL])}
    inputs = dataset_sample(dataset, count, seed, data_dir) if dataset else paths
    path = inspect_models(models, inputs, out_dir, methods=names, show=show)
    click.echo(f"report: {path}")
