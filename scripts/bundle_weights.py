"""Copy a finished `vitx train` run into reference_models/weights/ as a bundled model.

    python scripts/bundle_weights.py RUN_FOLDER NAME --out runs/mnist/baseline [--data-dir data]
        [--teacher runs/mnist/teacher/model.safetensors]

The weights are copied unchanged; in the JSON sidecar the run's own paths (where it was
written, where its data and teacher were, on the machine that trained it) are replaced by
the relative ones of the documented command, so no machine's layout ships in the package.
Everything else (architecture, classes, normalisation, history, settings) is kept as trained.
"""
import argparse
import json
import shutil
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent.parent / "reference_models" / "weights"


def bundle(run: Path, name: str, out: str, data_dir=None, teacher=None) -> Path:
    meta = json.loads((run / "model.json").read_text())
    history = meta.get("history") or []
    if not history or history[-1]["epoch"] < meta["train"]["epochs"]:
        raise SystemExit(f"{run}: not a finished run")
    meta["train"].update(out=out, data_dir=data_dir, teacher=teacher, log="none")
    shutil.copyfile(run / "model.safetensors", WEIGHTS / f"{name}.safetensors")
    (WEIGHTS / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return WEIGHTS / f"{name}.json"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("name")
    parser.add_argument("--out", required=True, help="the documented command's --out")
    parser.add_argument("--data-dir", help="the documented command's --data-dir")
    parser.add_argument("--teacher", help="the documented command's --teacher")
    args = parser.parse_args()
    print(bundle(args.run, args.name, args.out, args.data_dir, args.teacher))


if __name__ == "__main__":
    main()
