"""Print (or write into README.md) the "Supported models" table, generated from the rows of the
compatibility matrix that tests/test_compat.py runs, so the table only claims what is tested.

    python benchmarks/compat_table.py           # print the table
    python benchmarks/compat_table.py --write   # replace the table between the README markers
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from compat_rows import readme_table  # noqa: E402

START, END = "<!-- compat-table:start -->", "<!-- compat-table:end -->"


def main(argv):
    table = readme_table()
    if "--write" not in argv:
        print(table)
        return 0
    readme = ROOT / "README.md"
    text = readme.read_text()
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        print(f"README.md has no {START} ... {END} block", file=sys.stderr)
        return 1
    readme.write_text(pattern.sub(lambda _: f"{START}\n{table}\n{END}", text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
