"""The `vitx train` options of mode finetune (kept here so cli.py only gains one decorator)."""
import json

import click

from vitx.errors import VitxError

FINETUNE_DEFAULTS = {"model": None, "checkpoint": None, "pretrained": True, "model_args": (), "layer_decay": 0.75}
FLAGS = {"model": "--model", "checkpoint": "--checkpoint", "pretrained": "--no-pretrained", "model_args": "--model-arg",
         "layer_decay": "--layer-decay"}


def _value(text: str):
    """img_size=32 -> 32, drop_path_rate=0.1 -> 0.1, global_pool=token -> 'token'."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_model_args(pairs) -> dict:
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise VitxError(f"--model-arg expects key=value, got {pair!r}")
        kwargs[key.strip().replace("-", "_")] = _value(value.strip())
    return kwargs


def finetune_options(command):
    options = [
        click.option("--model", default=None,
                     help="finetune: the pretrained network: a timm ViT/DeiT name (e.g. vit_small_patch16_224), "
                          "hf:ORG/NAME (Hugging Face hub) or a local save_pretrained folder (model + image processor)."),
        click.option("--checkpoint", type=click.Path(),
                     help="finetune, timm: pretrained weights from this file (.safetensors or a torch state dict) "
                          "instead of the hub; the head is replaced for the dataset's classes."),
        click.option("--pretrained/--no-pretrained", default=True, show_default=True,
                     help="finetune: start from the pretrained weights (hub or folder), or from a random init "
                          "of the same network (tests, offline smoke runs)."),
        click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                     help="finetune, timm: create_model keyword (repeatable), e.g. img_size=384, drop_path_rate=0.1."),
        click.option("--layer-decay", default=0.75, show_default=True,
                     help="finetune: layer-wise lr decay; block i of L learns at lr * decay^(L + 1 - i), the head at lr."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def finetune_config(options: dict):
    """Pops the finetune options from `options`; -> a FinetuneConfig in mode finetune, else None."""
    finetune = {key: options.pop(key) for key in FINETUNE_DEFAULTS}
    if options["mode"] != "finetune":
        given = [FLAGS[key] for key, value in finetune.items() if value != FINETUNE_DEFAULTS[key]]
        if given:
            raise VitxError(f"{', '.join(given)}: only for --mode finetune")
        return None
    from .finetune import FinetuneConfig

    if not finetune["model"]:
        raise VitxError("--mode finetune needs --model NAME_OR_PATH (a timm ViT/DeiT, hf:ORG/NAME or a folder)")
    options = {k: v for k, v in options.items() if v is not None}  # lr: the fine-tuning default
    return FinetuneConfig(model=finetune["model"], checkpoint=finetune["checkpoint"], pretrained=finetune["pretrained"],
                          model_kwargs=parse_model_args(finetune["model_args"]), layer_decay=finetune["layer_decay"],
                          **options)
