"""Print the "Supported models" table (Markdown, one line per framework and family), generated
from the rows of the compatibility matrix that tests/test_compat.py runs, so the table only
claims what is tested. The docs' reference page (docs/reference/models.rst) is generated from
the same rows at build time (docs/_ext/vitx_reference.py), so there is no copy to keep in step.

    python benchmarks/compat_table.py           # print the table
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from compat_rows import readme_table  # noqa: E402


def main(argv):
    print(readme_table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
