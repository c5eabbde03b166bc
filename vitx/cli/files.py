"""`vitx explain` over many files: a progress bar, each result written as soon as its batch
is done (Ctrl-C keeps what finished), an unreadable image skipped with a warning naming it
(and a non-zero exit at the end), and output names that are unique and never an input's."""
import sys
import warnings
from pathlib import Path
from typing import Sequence

from ..errors import VitxError, printable
from ..files import output_names


def _say(text: str = "", err: bool = False) -> None:
    """Print without tearing the progress bar."""
    from tqdm import tqdm

    tqdm.write(printable(text), file=sys.stderr if err else sys.stdout)


def explain_files(net, paths: Sequence[str], method: str, options: dict, target, token, batch_size: int, out: Path,
                  save_maps: bool, colormap: str, layout=None, suffix: str = "") -> None:
    """Explain `paths` batch by batch, writing input | heatmap | overlay PNGs into `out`.
    Raises a VitxError at the end when some images could not be read."""
    from tqdm import tqdm

    from ..attribution.api import explain
    from ..imaging import read_image

    names = dict(zip(paths, output_names(paths, method + suffix, out, (".png", ".npy") if save_maps else (".png",))))
    failed, unexplained = [], []
    bar = tqdm(total=len(paths), desc=f"explain ({method})", unit="image", file=sys.stderr, leave=False,
               disable=len(paths) < 2 or not sys.stderr.isatty())
    with bar:
        for start in range(0, len(paths), batch_size):
            chunk, pictures = [], []
            for path in paths[start:start + batch_size]:
                try:
                    pictures.append(read_image(path))
                    chunk.append(path)
                except VitxError as exc:
                    failed.append((path, str(exc)))
                    _say(f"warning: skipped {path}: {exc}", err=True)
                    bar.update(1)
            if not chunk:
                continue
            with warnings.catch_warnings():  # NaN outputs: named by path below, not by position in the batch
                warnings.filterwarnings("ignore", message="the model's outputs contain NaN")
                result = explain(net, pictures, method=method, target=target, token=token, batch_size=batch_size,
                                 layout=layout, **options)
            for i, path in enumerate(chunk):
                if result.explained(i):
                    _write_one(result, i, path, names[path], out, save_maps, colormap)
                else:  # NaN / inf outputs: nothing to explain, no file written
                    unexplained.append((path, "the model's output is NaN or infinite"))
                    _say(f"warning: {path}: not explained, the model's output is NaN or infinite", err=True)
                bar.update(1)
    for what, problems in (("read", failed), ("explain", unexplained)):
        if problems:
            listed = ", ".join(p for p, _ in problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3
                                                              else "")
            detail = f": {problems[0][1]}" if len(problems) == 1 else f" ({listed})"
            raise VitxError(f"could not {what} {len(problems)} of {len(paths)} image(s){detail}")


def _write_one(result, i, source, name, out, save_maps, colormap):
    import numpy as np

    from ..imaging import save_png

    if result.targets is None:  # a similarity, text or regression target: its score, no classes
        lines = [f"{source}: explaining {result.target_description} (score {float(result.logits[i, 0]):.4f}) "
                 f"with {result.method} from the {result.token} token"]
    else:
        target = int(result.targets[i])
        label = result.class_name(target)
        lines = [f"{source}: explaining class {target}" + (f" ({label})" if label else "")
                 + f" with {result.method} from the {result.token} token"]
        for rank, p in enumerate(result.predictions[i], 1):
            lines.append(f"  {rank}. {p.index:>5} {p.probability:7.2%}  {p.name or ''}")
    save_png(out / f"{name}.png", result.panel(i, colormap=colormap))
    if save_maps:
        np.save(out / f"{name}.npy", result.maps[i].numpy().astype(np.float32))
    lines.append(f"  -> {out / (name + '.png')}")
    _say("\n".join(lines))
