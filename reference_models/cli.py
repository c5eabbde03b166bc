"""`vitx train` and `vitx study`, added to the vitx CLI by the reference-models plugin."""
import click

from vitx.datasets import DATASET_NAMES
from vitx.errors import VitxError

from .finetune_cli import finetune_config, finetune_options
from .study import PRESETS
from .train import AUGMENTS, MODES, TrainConfig
from .watch import LOGS


def _sizes(value):
    try:
        return [int(v) for v in value.split(",") if v.strip()] if value else []
    except ValueError:
        raise VitxError(f"--curriculum expects comma-separated sizes such as 16,24,28, got {value!r}") from None


@click.command("train")
@click.option("--dataset", default="fashion_mnist", show_default=True, type=click.Choice(DATASET_NAMES),
              help="Training and test data (28 px grey or 32 px colour; finetune resizes to the model's resolution).")
@click.option("--mode", default="baseline", show_default=True, type=click.Choice(MODES),
              help="teacher: the CNN; baseline: ViT from scratch; kd: ViT distilled from --teacher; deit: ViT with a "
                   "distillation token; finetune: a pretrained --model with a new head.")
@click.option("--out", required=True, type=click.Path(), help="Run folder: model.safetensors/json, state.pt, history.")
@click.option("--epochs", default=10, show_default=True, help="Passes over the training set.")
@click.option("--batch-size", default=128, show_default=True, help="Images per optimisation step.")
@click.option("--lr", default=None, type=float,
              help="Peak AdamW learning rate after the warmup, cosine-decayed to 1 % [default: 2e-3; 1e-4 with finetune].")
@click.option("--weight-decay", default=0.05, show_default=True, help="AdamW weight decay.")
@click.option("--warmup-epochs", default=1.0, show_default=True, help="Linear learning-rate warmup, in epochs.")
@click.option("--label-smoothing", default=0.1, show_default=True, help="Cross-entropy label smoothing.")
@click.option("--seed", default=0, show_default=True, help="Seed for initialisation, data order and subsets.")
@click.option("--teacher", type=click.Path(), help="Teacher checkpoint (modes kd, deit).")
@click.option("--kd-temperature", default=4.0, show_default=True, help="Softmax temperature of soft KD (mode kd).")
@click.option("--kd-alpha", default=0.5, show_default=True, help="Weight of the teacher term in soft KD (mode kd).")
@click.option("--kd-hard", is_flag=True, help="kd with the teacher's hard labels instead of soft KL.")
@click.option("--deit-soft", is_flag=True,
              help="deit with soft distillation: the dist token learns the teacher's softmax at --kd-temperature "
                   "(KL) instead of its hard labels.")
@click.option("--curriculum", default="", help="Resolutions in equal stages, e.g. 16,24,28.")
@click.option("--ema", default=0.0, help="EMA decay (0: off).")
@click.option("--augment", default="default", show_default=True, type=click.Choice(AUGMENTS),
              help="default: random crop+flip (CIFAR-10, Fashion-MNIST) or affine (MNIST) per image; flip: random "
                   "horizontal flip only; affine: small random rotation, scale and shift (digits); affine-half: affine on "
                   "a random half of each batch, the rest kept crisp; none. All but default decode the split once "
                   "and augment on the batch (faster on a CPU).")
@click.option("--mixup", default=0.0, help="Mixup alpha; > 0 mixes batches with Mixup or CutMix (torchvision v2).")
@click.option("--dim", default=64, show_default=True, help="From-scratch ViT: embedding width.")
@click.option("--depth", default=4, show_default=True, help="From-scratch ViT: transformer blocks.")
@click.option("--heads", default=4, show_default=True, help="From-scratch ViT: attention heads.")
@click.option("--patch-size", default=4, show_default=True, help="From-scratch ViT: patch side in pixels.")
@click.option("--mlp-ratio", default=2.0, show_default=True, help="From-scratch ViT: MLP width / embedding width.")
@click.option("--drop-path", default=0.0, show_default=True, help="From-scratch ViT: stochastic depth rate.")
@click.option("--local-ffn", is_flag=True, help="Depth-wise 3x3 conv in the feed-forward block (LocalViT).")
@click.option("--teacher-width", default=16, show_default=True, help="Teacher CNN: width of its first stage.")
@finetune_options
@click.option("--train-limit", default=0, help="Use only N training images (0: all).")
@click.option("--test-limit", default=0, help="Use only N test images (0: all).")
@click.option("--data-dir", type=click.Path(), help="Dataset folder [default: ~/.cache/vitx/data].")
@click.option("--download/--no-download", default=True, show_default=True,
              help="Download the dataset when it is not in --data-dir (or Debian's Fashion-MNIST).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda (cuda: mixed precision).")
@click.option("--log", default="none", show_default=True, type=click.Choice(LOGS),
              help="tensorboard: loss, accuracy and lr per epoch, and a few test images' attention maps, in "
                   "OUT/tensorboard (`tensorboard --logdir OUT/tensorboard`; pip install 'vitx[tensorboard]').")
@click.option("--resume", is_flag=True, help="Continue from OUT/state.pt (--epochs may grow; other settings must match).")
@click.option("--force", is_flag=True, help="Overwrite a run already in OUT (otherwise refused).")
def train_command(dim, depth, heads, patch_size, mlp_ratio, drop_path, local_ffn, curriculum, resume, force, **options):
    """Train the CNN teacher or a ViT / KD / DeiT student, or fine-tune a pretrained ViT
    (Ctrl-C saves; --resume continues)."""
    import sys

    from .train import train

    vit = dict(dim=dim, depth=depth, heads=heads, patch_size=patch_size, mlp_ratio=mlp_ratio,
               drop_path=drop_path, local_ffn=local_ffn)
    config = finetune_config(options)  # None unless --mode finetune
    if config is None:
        options["lr"] = 2e-3 if options["lr"] is None else options["lr"]
        config = TrainConfig(vit=vit, curriculum=_sizes(curriculum), **options)
    history = train(config, resume=resume, force=force)
    if not history or history[-1]["epoch"] < config.epochs:  # Ctrl-C: saved, but not finished
        sys.exit(130)
    click.echo(f"test accuracy {history[-1]['test_accuracy']:.4f} after {history[-1]['epoch']} epochs -> {options['out']}")


@click.command("study")
@click.option("--dataset", default="fashion_mnist", show_default=True, type=click.Choice(DATASET_NAMES))
@click.option("--preset", type=click.Choice(list(PRESETS)),
              help="smoke: a subset, minutes on a CPU; full: the one-GPU recipe; mnist: teacher, ViT and DeiT (hard "
                   "and soft) on all of MNIST, 99 %+ each, ~20 min per run on 2 CPU cores [default: mnist for "
                   "--dataset mnist, else smoke].")
@click.option("--out", default="study", show_default=True, type=click.Path())
@click.option("--data-dir", type=click.Path(), help="torchvision data root (the official archives are enough).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--download/--no-download", default=True, show_default=True)
@click.option("--log", default="none", show_default=True, type=click.Choice(LOGS),
              help="tensorboard: every run logs its curves and attention maps in OUT/<run>/tensorboard.")
@click.option("--with-finetune", metavar="MODEL",
              help="Add a fine-tuned pretrained ViT: a finished `vitx train --mode finetune` run folder, or a "
                   "network to fine-tune here (timm name, hf:ORG/NAME, save_pretrained folder).")
@click.option("--finetune-checkpoint", type=click.Path(), help="Pretrained weights file for --with-finetune (timm, offline).")
def study_command(**options):
    """The CNN teacher and ViT students from scratch (baseline, KD, DeiT; with --dataset mnist:
    baseline and DeiT with hard and soft distillation): comparison table, curves, attention,
    attention distance and sanity check in OUT/report/report.html and OUT/results.json."""
    from .study import run_study

    run_study(**options)
    out = options["out"]
    click.echo(open(f"{out}/results.md").read())
    click.echo(f"figures: {out}/curves.png, {out}/attention_maps.png; results: {out}/results.json; "
               f"report: {out}/report/report.html")
