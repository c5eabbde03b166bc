"""What every command shares: the default model and the options explain, evaluate and inspect
all take, declared once here with one help text (no command imports another)."""
import click

from ..batches import DEFAULT_BATCH_SIZE

DEFAULT_MODEL = "fashion_vit"  # bundled reference ViT (vitx.reference_models.weights): works offline

MODEL_HELP = ("Model name or alias, hf:ORG/NAME or hf:DIR, open_clip:NAME, or a checkpoint dir "
              f"[default: {DEFAULT_MODEL}].")
CHECKPOINT_HELP = "Weights file (.safetensors, or a torch state dict) for --model."


def model_option(multiple: bool = False):
    """--model / -m: one model, or (inspect) several side by side."""
    if multiple:
        return click.option("--model", "-m", "model_names", multiple=True, help=MODEL_HELP + " Repeatable.")
    return click.option("--model", "-m", default=None, help=MODEL_HELP)


def checkpoint_option(multiple: bool = False):
    if multiple:
        return click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(),
                            help=CHECKPOINT_HELP + " Repeatable, one per --model in order.")
    return click.option("--checkpoint", type=click.Path(), help=CHECKPOINT_HELP)


device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
batch_size_option = click.option("--batch-size", default=DEFAULT_BATCH_SIZE, show_default=True, type=int,
                                 help="Images per forward pass.")


def out_option(default: str):
    return click.option("--out", "out_dir", default=default, show_default=True, type=click.Path(),
                        help="Output folder (created; nothing in it is overwritten but this command's own files).")
