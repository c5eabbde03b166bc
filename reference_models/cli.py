"""`vitx train` and `vitx study`, added to the vitx CLI by the reference-models plugin."""
import click

from vitx.errors import VitxError

from .train import AUGMENTS, MODES, TrainConfig


def _sizes(value):
    try:
        return [int(v) for v in value.split(",") if v.strip()] if value else []
    except ValueError:
        raise VitxError(f"--curriculum expects comma-separated sizes such as 16,24,28, got {value!r}") from None


@click.command("train")
@click.option("--dataset", default="fashion_mnist", show_default=True, type=click.Choice(["fashion_mnist", "mnist", "cifar10"]))
@click.option("--mode", default="baseline", show_default=True, type=click.Choice(MODES))
@click.option("--out", required=True, type=click.Path(), help="Run folder: model.safetensors/json, state.pt, history.")
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--lr", default=2e-3, show_default=True)
@click.option("--weight-decay", default=0.05, show_default=True)
@click.option("--warmup-epochs", default=1.0, show_default=True)
@click.option("--label-smoothing", default=0.1, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--teacher", type=click.Path(), help="Teacher checkpoint (modes kd, deit).")
@click.option("--kd-temperature", default=4.0, show_default=True)
@click.option("--kd-alpha", default=0.5, show_default=True)
@click.option("--kd-hard", is_flag=True, help="kd with the teacher's hard labels instead of soft KL.")
@click.option("--curriculum", default="", help="Resolutions in equal stages, e.g. 16,24,28.")
@click.option("--ema", default=0.0, help="EMA decay (0: off).")
@click.option("--augment", default="default", show_default=True, type=click.Choice(AUGMENTS),
              help="default: random crop+flip (CIFAR-10, Fashion-MNIST) or affine (MNIST) per image; flip: random "
                   "horizontal flip only; none. flip and none decode the split once, in memory (faster on a CPU).")
@click.option("--mixup", default=0.0, help="Mixup alpha; > 0 mixes batches with Mixup or CutMix (torchvision v2).")
@click.option("--dim", default=64, show_default=True)
@click.option("--depth", default=4, show_default=True)
@click.option("--heads", default=4, show_default=True)
@click.option("--patch-size", default=4, show_default=True)
@click.option("--mlp-ratio", default=2.0, show_default=True)
@click.option("--drop-path", default=0.0, show_default=True)
@click.option("--local-ffn", is_flag=True, help="Depth-wise 3x3 conv in the feed-forward block (LocalViT).")
@click.option("--teacher-width", default=16, show_default=True)
@click.option("--train-limit", default=0, help="Use only N training images (0: all).")
@click.option("--test-limit", default=0, help="Use only N test images (0: all).")
@click.option("--data-dir", type=click.Path(), help="Dataset folder [default: ~/.cache/vitx/data].")
@click.option("--download/--no-download", default=True, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/state.pt (--epochs may grow; other settings must match).")
@click.option("--force", is_flag=True, help="Overwrite a run already in OUT (otherwise refused).")
def train_command(dim, depth, heads, patch_size, mlp_ratio, drop_path, local_ffn, curriculum, resume, force, **options):
    """Train the CNN teacher or a ViT / KD / DeiT student (Ctrl-C saves; --resume continues)."""
    import sys

    from .train import train

    vit = dict(dim=dim, depth=depth, heads=heads, patch_size=patch_size, mlp_ratio=mlp_ratio,
               drop_path=drop_path, local_ffn=local_ffn)
    config = TrainConfig(vit=vit, curriculum=_sizes(curriculum), **options)
    history = train(config, resume=resume, force=force)
    if not history or history[-1]["epoch"] < config.epochs:  # Ctrl-C: saved, but not finished
        sys.exit(130)
    click.echo(f"test accuracy {history[-1]['test_accuracy']:.4f} after {history[-1]['epoch']} epochs -> {options['out']}")


@click.command("study")
@click.option("--dataset", default="fashion_mnist", show_default=True, type=click.Choice(["fashion_mnist", "mnist", "cifar10"]))
@click.option("--preset", default="smoke", show_default=True, type=click.Choice(["smoke", "full"]))
@click.option("--out", default="study", show_default=True, type=click.Path())
@click.option("--data-dir", type=click.Path())
@click.option("--device", default="cpu", show_default=True)
@click.option("--download/--no-download", default=True, show_default=True)
def study_command(**options):
    """Teacher, baseline ViT, ViT + KD and DeiT: accuracy table and attention-map figure."""
    from .study import run_study

    run_study(**options)
    out = options["out"]
    click.echo(open(f"{out}/results.md").read())
    click.echo(f"figure: {out}/attention_maps.png, report: {out}/report/report.html")
