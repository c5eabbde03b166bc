"""`vitx explain FOLDER` / `vitx explain --dataset NAME`: the dataset mode of `vitx explain`.

Kept out of cli/main.py: the options are added by one decorator and the command hands over
to `run_dataset_explain` when it is given a folder or a dataset (see vitx.attribution.stream
for the output format, resuming and torchrun).
"""
from pathlib import Path

import click

from ..datasets import DATASET_NAMES
from ..errors import VitxError



def dataset_options(command):
    """--dataset, --data-dir, --n and --workers of `vitx explain`."""
    for option in reversed([
        click.option("--dataset", default=None, type=click.Choice(DATASET_NAMES),
                     help="Explain a dataset's test split (maps written in shards; see docs/howto/datasets-torchrun.md)."),
        click.option("--data-dir", type=click.Path(), help="Dataset folder [default: ~/.cache/vitx/data]."),
        click.option("--limit", "--n", "count", type=int, default=None,
                     help="Only the first N images of a folder or dataset (--n: same; under torchrun use --limit)."),
        click.option("--workers", default=2, show_default=True, help="DataLoader processes for a folder or dataset."),
    ]):
        command = option(command)
    return command


def wants_dataset(paths, dataset) -> bool:
    return dataset is not None or (len(paths) == 1 and Path(paths[0]).is_dir())


def run_dataset_explain(paths, model, checkpoint, pretrained, method, options, target, token, device, batch_size,
                        out_dir, dataset, data_dir, count, workers):
    """Explain a folder or dataset into OUT (shards + index), resuming what exists; under
    torchrun every rank takes its share and rank 0 writes the index."""
    from ..attribution.stream import ImageFiles, explain_dataset
    from ..distributed import init_world, rank_device
    from ..models import load_model
    from ..registry import find_adapter
    from .options import DEFAULT_MODEL

    if dataset is not None and paths:
        raise VitxError("give either a folder / images or --dataset NAME, not both")
    if count is not None and count < 1:
        raise VitxError(f"--limit must be at least 1, got {count}")
    world = init_world(device)
    model_name = model or DEFAULT_MODEL
    net = load_model(model_name, checkpoint=checkpoint, pretrained=pretrained, device=rank_device(world, device))
    if dataset is not None:
        from vitx.datasets import load_split

        data, name = load_split(dataset, train=False, data_dir=data_dir, augment=False), dataset
    else:
        data, name = ImageFiles(paths[0], find_adapter(net).preprocessing(net)), str(paths[0])
    result = explain_dataset(net, data, out_dir, method=method, name=name, target=target, token=token,
                             batch_size=batch_size, workers=workers, count=count, options=options, world=world,
                             model_name=str(Path(checkpoint).name if checkpoint else model_name))
    if world.is_main:
        click.echo(f"{result['images']} images in {result['shards']} shards ({result['skipped']} already there) "
                   f"-> {Path(out_dir) / 'index.csv'}, {Path(out_dir) / 'maps'}")
    unreadable = result["unreadable"]
    if unreadable:
        more = f" and {len(unreadable) - 1} more (see the warnings)" if len(unreadable) > 1 else ""
        raise VitxError(f"skipped {len(unreadable)} unreadable image(s): {unreadable[0]}{more}")
