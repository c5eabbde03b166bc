"""The `vitx` command line: a thin layer over the library API.

Every user-fixable problem surfaces as a VitxError, printed as one line with exit code 1.
The spellings of the original `vit_explain.py` (--image_path, --head_fusion,
--discard_ratio, --category_index, --use_cuda) are accepted too.
"""
import sys
import warnings

import click

from ..errors import VitxError, printable
from .dataset import dataset_options, run_dataset_explain, wants_dataset
from .method_options import drop_flag, flag_value, given_options, method_option_flags, per_method
from .options import (
    DEFAULT_MODEL, batch_size_option, checkpoint_option, device_option, model_option, out_option,
)


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


# before anything below builds the registry (the generated method flags read it at import):
# a plugin's load warning is one `warning:` line, not Python's two lines with a source path
warnings.formatwarning = _one_line_warning


def _conflicting_spellings(command: click.Command, args) -> None:
    """One option given under two of its spellings with different values (`--discard-ratio 0.1
    --discard_ratio 0.9`, `--internal-batch-size 4 --steps-per-pass 8`) is an error: click
    would keep the last one silently, while the library and `-o` refuse the same conflict.
    The same spelling twice stays click's "the last one wins"."""
    owners = {}
    for param in command.params:
        if isinstance(param, click.Option) and not (param.multiple or param.count or param.is_flag):
            owners.update({spelling: param for spelling in param.opts})
    given = {}
    words = iter(args)
    for word in words:
        if word == "--":
            break
        flag, has_value, value = word.partition("=")
        if flag in owners and flag.startswith("--"):
            value = value if has_value else next(words, None)
            given.setdefault(owners[flag].name, []).append((flag, value))
    for uses in given.values():  # one spelling repeated keeps click's rule (the last wins): scripts append overrides
        clash = next(((u, w) for u in uses for w in uses if u[0] != w[0] and u[1] != w[1]), None)
        if clash:
            (first, a), (second, b) = clash
            raise VitxError(f"{first} {a} and {second} {b} are one option given two values; give one")


class VitxGroup(click.Group):
    """Turns VitxError into `Error: <message>` and exit code 1, never a traceback."""

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            _conflicting_spellings(command, rest)
        return name, command, rest

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VitxError as exc:
            raise click.ClickException(printable(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=VitxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vitx")
def main():
    """vitx: see why a Vision Transformer predicted what it did."""
    warnings.formatwarning = _one_line_warning


@main.command()
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--image_path", "--image-path", "legacy_images", multiple=True, help="Image file (vit_explain.py spelling).")
@model_option()
@checkpoint_option()
@click.option("--pretrained/--no-pretrained", default=None, help="Fetch hub weights (default: when no --checkpoint).")
@click.option("--method", default=None, help="Explainer (see `vitx methods`) [default: grad_rollout with a category index, else rollout].")
@click.option("--target", "--category-index", "--category_index", "category_index", type=int,
              help="Class to explain (the library's target=; vit_explain.py: --category_index) [default: predicted].")
@click.option("--text", "texts", multiple=True, help="Explain the similarity to this text prompt (CLIP, SigLIP; repeatable: one map per prompt).")
@click.option("--reference", type=click.Path(), help="Explain the embedding's similarity to this image's (backbones, CLIP).")
@click.option("--layout", "--grid", "grid", default=None,
              help="Patch grid HxW, when vitx cannot tell it (the library's layout=; extra tokens come first).")
@click.option("--token", default=None, help="Token to explain from: cls, dist, mean, reg0... [default: what the head reads].")
@device_option
@click.option("--use_cuda", "--use-cuda", "use_cuda", is_flag=True, help="Same as --device cuda (vit_explain.py spelling).")
@batch_size_option
@out_option("vitx-out")
@click.option("--save-maps", is_flag=True, help="Also save each patch map as .npy.")
@click.option("--colormap", default="jet", show_default=True, help="jet, inferno, viridis, turbo or magma.")
@dataset_options
@method_option_flags()
def explain(images, legacy_images, model, checkpoint, pretrained, method, category_index, texts, reference, grid,
            token, device, use_cuda, batch_size, out_dir, save_maps, colormap, **dataset_args):
    """Explain the predictions for IMAGE... and write input | heatmap | overlay PNGs.

    Given one FOLDER or --dataset NAME, write the maps in shards instead (resumable; runs
    under torchrun; see docs/howto/datasets-torchrun.md)."""
    from ..imaging import COLORMAPS
    from ..models import load_model, resolve_device
    from ..registry import get_explainer
    from .checks import MAX_BATCH, MAX_WORKERS, model_and_checkpoint, out_folder, within
    from .files import explain_files

    paths = list(images) + list(legacy_images)
    if not paths and dataset_args["dataset"] is None:
        raise VitxError("no images given: vitx explain IMAGE... (see --help)")
    if sum(bool(t) for t in (category_index is not None, texts, reference)) > 1:
        raise VitxError("give one kind of target: --category-index, --text or --reference")
    method = method or ("grad_rollout" if category_index is not None or texts or reference else "rollout")
    legacy_fusion = flag_value(dataset_args, "head_fusion")
    if method == "grad_rollout" and legacy_fusion is not None:
        # vit_explain.py accepted --head_fusion with a category index and ignored it (-o head_fusion stays an error)
        drop_flag(dataset_args, "head_fusion")
        click.echo(f"note: grad_rollout fuses heads by the gradient-weighted mean (as vit_explain.py did); "
                   f"--head-fusion {legacy_fusion} is ignored", err=True)
    options = per_method(given_options(dataset_args), [method])[method]
    if colormap not in COLORMAPS:
        raise VitxError(f"unknown colormap {colormap!r}; use one of {', '.join(COLORMAPS)}")
    if category_index is not None and abs(category_index) >= 2 ** 63:
        raise VitxError(f"category index {category_index} out of range")
    within(batch_size, "--batch-size", 1, MAX_BATCH)
    within(dataset_args["workers"], "--workers", 0, MAX_WORKERS)
    explainer = get_explainer(method).cls(**options)  # reject bad options before loading a model
    if wants_dataset(paths, dataset_args["dataset"]):
        if texts or reference or grid:
            raise VitxError("--text, --reference and --grid explain image files, not a folder or --dataset")
        model, checkpoint = model_and_checkpoint(model, checkpoint, DEFAULT_MODEL)
        return run_dataset_explain(paths, model, checkpoint, pretrained, method, options, category_index, token,
                                   "cuda" if use_cuda else device, batch_size, out_dir, **dataset_args)
    if dataset_args["count"] is not None:
        raise VitxError("--limit / --n count the images of a folder or --dataset; give one of those")
    device = resolve_device("cuda" if use_cuda else device)
    model, checkpoint = model_and_checkpoint(model, checkpoint, DEFAULT_MODEL)
    out = out_folder(out_dir)
    net = load_model(model, checkpoint=checkpoint, pretrained=pretrained, device=device)
    targets = _targets(net, category_index, texts, reference)
    if len(targets) > 1 and not explainer.uses_gradients():
        warnings.warn(f"method {method!r} does not depend on the target, so every prompt gets the same map; "
                      "use grad_rollout or chefer2021")
    for suffix, target in targets:
        explain_files(net, paths, method, options, target, token, batch_size, out, save_maps, colormap,
                      layout=grid, suffix=suffix)


def _targets(net, category_index, texts, reference):
    """[(file-name suffix, target)]: one entry per map to write for each image."""
    import re

    from ..attribution.multimodal import reference_target, text_targets

    if texts:
        return [(f"_text{i}-" + re.sub(r"[^A-Za-z0-9]+", "-", t.prompt)
                 .strip("-")[:40], t) for i, t in enumerate(text_targets(net, texts))]
    if reference:
        return [("_reference", reference_target(net, reference))]
    return [("", category_index)]


@main.command()
@click.option("--cost", is_flag=True, help=f"Also count each method's cost, in forward-equivalents per image (a "
              f"backward counts as two), on the bundled {DEFAULT_MODEL} with default options.")
def methods(cost):
    """List every registered explainer, its options and the plugin it came from."""
    from ..attribution.api import list_methods
    from ..registry import get_registry

    costs = _default_costs(list_methods()) if cost else {}
    for name, (cls, plugin) in list_methods().items():
        grad = "  [needs gradients]" if cls.needs_gradients() else ""
        click.echo(f"{name}  (plugin: {plugin}){grad}")
        click.echo(f"    {cls.summary}")
        if name in costs:
            click.echo(f"    cost: {costs[name]:g} forward-equivalents per image ({DEFAULT_MODEL}, default options)")
        if cls.paper:
            click.echo(f"    paper: {cls.paper}")
        for o in cls.options:
            choices = f" {{{', '.join(map(str, o.choices))}}}" if o.choices else ""
            was = f" (also --{', --'.join(a.replace('_', '-') for a in o.aliases)})" if o.aliases else ""
            click.echo(f"    --{o.name.replace('_', '-')}={o.default}{choices}  {o.help}{was}")
    for name, reason in get_registry().failed.items():
        click.echo(f"(plugin {name} failed to load: {reason})")


def _default_costs(methods) -> dict:
    """{method: forward-equivalents per image} counted on the bundled model (vitx.evaluate.cost)."""
    import torch

    from ..evaluate.cost import method_costs
    from ..models import load_model
    from ..registry import data_config

    net = load_model(DEFAULT_MODEL)
    image = torch.rand(1, *data_config(net)["input_size"], generator=torch.Generator().manual_seed(0))
    return method_costs(net, image, methods)


@main.command()
def models():
    """List model aliases, registered models and the model families vitx explains."""
    import timm
    import torchvision

    from ..registry import get_registry

    click.echo("Named models (use with --model):")
    for name, entry in sorted(get_registry().models.items()):
        default = "  [default]" if name == DEFAULT_MODEL else ""
        click.echo(f"  {name:<24} {entry.description}  (plugin: {entry.plugin}){default}")
    click.echo("Families:")
    for pattern in ("vit_*", "deit*", "eva*", "beit*"):
        click.echo(f"  timm {pattern:<8} {len(timm.list_models(pattern))} models, e.g. {timm.list_models(pattern)[0]}")
    vits = [m for m in torchvision.models.list_models() if m.startswith("vit_")]
    click.echo(f"  torchvision/<name>   {', '.join(vits)}")
    click.echo("  hf:ORG/NAME or hf:DIR    Hugging Face transformers (ViT, DeiT, DINOv2, BEiT, CLIP, SigLIP; "
               "Swin, SwinV2 and PvtV2 rolled out by stage)" + _extra_state("transformers", "hf"))
    click.echo("  open_clip:NAME@TAG or open_clip:DIR   open_clip CLIP models and their image towers"
               + _extra_state("open_clip", "clip"))
    click.echo("  any model calling F.scaled_dot_product_attention, or any model with an adapter plugin")


def _extra_state(module, extra):
    import importlib.util

    return "" if importlib.util.find_spec(module) else f'  [not installed: pip install "vitx[{extra}]"]'


def _add_builtin_commands():
    from .evaluate import evaluate_command
    from .inspect import inspect_command

    main.add_command(evaluate_command)
    main.add_command(inspect_command)


def _add_plugin_commands():
    """Commands contributed by plugins (hook vitx_register_commands), e.g. `vitx train`."""
    from ..registry import get_registry

    for command in get_registry().manager.hook.vitx_register_commands():
        for cmd in command or ():
            main.add_command(cmd)


_add_builtin_commands()
_add_plugin_commands()

if __name__ == "__main__":
    main()
