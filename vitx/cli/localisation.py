"""`vitx evaluate --masks PATH`: localisation scores (vitx.evaluate.localisation) to
localisation.json / localisation.md and the terminal."""
import json
from itertools import islice
from pathlib import Path

import click

from ..errors import VitxError


def localisation_command(model_name, checkpoint, device, masks, methods, count, batch_size, out_dir, options=None):
    """Score `methods` on the masks at `masks` (a gtsegs_ijcv.mat file or an images/ + masks/ folder)."""
    from ..evaluate.localisation import evaluate_localisation
    from ..evaluate.masks import gtsegs_ijcv, mask_folder
    from ..markdown import markdown_table
    from ..models import load_model

    source = Path(masks)
    if not source.exists():
        raise VitxError(f"masks not found: {source}")
    pairs = gtsegs_ijcv(source, count) if source.is_file() else islice(mask_folder(source), count)
    model = load_model(model_name, checkpoint=checkpoint, device=device)
    results = evaluate_localisation(model, pairs, methods, batch_size=batch_size, options=options, progress=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "localisation.json").write_text(json.dumps({"masks": str(source), "results": results}, indent=1))
    header = ["method", "pixel accuracy", "mIoU", "mAP", "pointing game", "images"]
    table = markdown_table(header, [[m, f"{r['pixel_accuracy']:.4f}", f"{r['mIoU']:.4f}", f"{r['mAP']:.4f}",
                                     f"{r['pointing_game']:.4f}", r["count"]] for m, r in results.items()])
    (out / "localisation.md").write_text(f"Localisation on {source} (maps thresholded at their mean)\n\n{table}\n")
    click.echo(table)
    click.echo(f"-> {out / 'localisation.json'}")
