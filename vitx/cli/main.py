"""The `vitx` command line: a thin layer over the library API.

Every user-fixable problem surfaces as a VitxError, printed as one line with exit code 1.
The spellings of the original `vit_explain.py` (--image_path, --head_fusion,
--discard_ratio, --category_index, --use_cuda) are accepted too.
"""
import sys
import warnings
from pathlib import Path

import click

from ..errors import VitxError
from .options import DEFAULT_MODEL, HEAD_FUSIONS



def _one_line_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


class VitxGroup(click.Group):
    """Turns VitxError into `Error: <message>` and exit code 1, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VitxError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=VitxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vitx")
def main():
    """vitx: see why a Vision Transformer predicted what it did."""
    warnings.formatwarning = _one_line_warning


def _parse_options(pairs):
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise VitxError(f"--option expects key=value, got {pair!r}")
        options[key.strip().replace("-", "_")] = value.strip()
    return options


def _output_names(sources, method):
    seen = {}
    for i, source in enumerate(sources):
        stem = Path(source).stem if source else f"image{i}"
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        yield f"{stem}_{method}" if count == 0 else f"{stem}-{count}_{method}"


@main.command()
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--image_path", "--image-path", "legacy_images", multiple=True, help="Image file (vit_explain.py spelling).")
@click.option("--model", "-m", default=None, help=f"Model name, alias or checkpoint dir [default: {DEFAULT_MODEL}].")
@click.option("--checkpoint", type=click.Path(), help="Weights file (.safetensors, or a torch state dict).")
@click.option("--pretrained/--no-pretrained", default=None, help="Fetch hub weights (default: when no --checkpoint).")
@click.option("--method", default=None, help="Explainer (see `vitx methods`) [default: grad_rollout with a category index, else rollout].")
@click.option("--category-index", "--category_index", "category_index", type=int, help="Class to explain [default: predicted].")
@click.option("--grid", default=None, help="Patch grid HxW, when vitx cannot tell it (extra tokens come first).")
@click.option("--token", default=None, help="Token to explain from: cls, dist, mean, reg0... [default: what the head reads].")
@click.option("--head-fusion", "--head_fusion", "head_fusion", type=click.Choice(HEAD_FUSIONS), help="Head fusion (rollout, raw_attention).")
@click.option("--discard-ratio", "--discard_ratio", "discard_ratio", type=float, help="Fraction of lowest attention dropped.")
@click.option("--layer", type=int, help="Layer (raw_attention).")
@click.option("--head", type=int, help="Head (raw_attention).")
@click.option("--option", "-o", "extra_options", multiple=True, help="Any method option as key=value (repeatable).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--use_cuda", "--use-cuda", "use_cuda", is_flag=True, help="Same as --device cuda (vit_explain.py spelling).")
@click.option("--batch-size", default=16, show_default=True, type=int, help="Images per forward pass.")
@click.option("--out", "out_dir", default="vitx-out", show_default=True, type=click.Path(), help="Output folder.")
@click.option("--save-maps", is_flag=True, help="Also save each patch map as .npy.")
@click.option("--colormap", default="jet", show_default=True, help="jet, inferno, viridis, turbo or magma.")
def explain(images, legacy_images, model, checkpoint, pretrained, method, category_index, grid, token, head_fusion,
            discard_ratio, layer, head, extra_options, device, use_cuda, batch_size, out_dir, save_maps, colormap):
    """Explain the predictions for IMAGE... and write input | heatmap | overlay PNGs."""
    import numpy as np

    from ..attribution.api import explain as run_explain
    from ..imaging import save_png
    from ..models import load_model

    paths = list(images) + list(legacy_images)
    if not paths:
        raise VitxError("no images given: vitx explain IMAGE... (see --help)")
    method = method or ("grad_rollout" if category_index is not None else "rollout")
    options = {k: v for k, v in dict(head_fusion=head_fusion, discard_ratio=discard_ratio, layer=layer, head=head).items()
               if v is not None}
    options.update(_parse_options(extra_options))
    from ..registry import get_explainer

    get_explainer(method).cls(**options)  # reject bad options before loading a model
    net = load_model(model or DEFAULT_MODEL, checkpoint=checkpoint, pretrained=pretrained,
                     device="cuda" if use_cuda else device)
    result = run_explain(net, paths, method=method, target=category_index, token=token, layout=grid,
                         batch_size=batch_size, **options)
    out = Path(out_dir)
    for i, name in enumerate(_output_names(result.sources, method)):
        target = int(result.targets[i])
        label = result.class_name(target)
        click.echo(f"{result.sources[i]}: explaining class {target}" + (f" ({label})" if label else "")
                   + f" with {method} from the {result.token} token")
        for rank, p in enumerate(result.predictions[i], 1):
            click.echo(f"  {rank}. {p.index:>5} {p.probability:7.2%}  {p.name or ''}")
        save_png(out / f"{name}.png", result.panel(i, colormap=colormap))
        if save_maps:
            np.save(out / f"{name}.npy", result.maps[i].numpy().astype(np.float32))
        click.echo(f"  -> {out / (name + '.png')}")


@main.command()
def methods():
    """List every registered explainer, its options and the plugin it came from."""
    from ..attribution.api import list_methods
    from ..registry import get_registry

    for name, (cls, plugin) in list_methods().items():
        grad = "  [needs gradients]" if cls.uses_gradients() else ""
        click.echo(f"{name}  (plugin: {plugin}){grad}")
        click.echo(f"    {cls.summary}")
        if cls.paper:
            click.echo(f"    paper: {cls.paper}")
        for o in cls.options:
            choices = f" {{{', '.join(map(str, o.choices))}}}" if o.choices else ""
            click.echo(f"    --{o.name.replace('_', '-')}={o.default}{choices}  {o.help}")
    for name, reason in get_registry().failed.items():
        click.echo(f"(plugin {name} failed to load: {reason})")


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
    click.echo("  any model calling F.scaled_dot_product_attention, or any model with an adapter plugin")


def _add_builtin_commands():
    from .evaluate import evaluate_command
    from .inspect import inspect_command

    main.add_command(evaluate_command)
    main.add_command(inspect_command)


def _add_plugin_commands():
    """Commands contributed by plugins (hook vitx_register_commands), e.g. `vitx train`."""
    from ..registry import get_registry

    warnings.formatwarning = _one_line_warning  # plugin load warnings, printed as one line
    for command in get_registry().manager.hook.vitx_register_commands():
        for cmd in command or ():
            main.add_command(cmd)


_add_builtin_commands()
_add_plugin_commands()

if __name__ == "__main__":
    main()
