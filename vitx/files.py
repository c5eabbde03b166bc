"""Files vitx writes: never half-written (temp + rename), never over an input, never two
outputs under one name. Shared by the CLI, `Explanation.save`, dataset shards and the
reference models' checkpoints."""
import os
import tempfile
from pathlib import Path
from typing import List, Sequence

from .errors import VitxError


def atomic_write(path, write) -> None:
    """write(tmp_path) then rename over `path` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide checkpoints from other users
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def output_names(sources: Sequence[str], method: str, out: Path, suffixes=(".png",)) -> List[str]:
    """`<stem>_<method>` per source, made unique (`<stem>-1_<method>`...) so that two inputs
    with one stem (d1/a.png, d2/a.png) get two outputs and no output path is an input file."""
    inputs = {Path(s).resolve() for s in sources if s}
    used, names = set(), []
    for i, source in enumerate(sources):
        stem = Path(source).stem if source else f"image{i}"
        for count in range(len(sources) + len(inputs) + 1):
            name = f"{stem}_{method}" if count == 0 else f"{stem}-{count}_{method}"
            if name not in used and not any((out / (name + s)).resolve() in inputs for s in suffixes):
                break
        if Path(name).name != name or name in (".", ".."):
            raise VitxError(f"output name {name!r} would leave the output folder; method and model names are "
                            "identifiers")
        used.add(name)
        names.append(name)
    return names
