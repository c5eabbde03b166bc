"""Markdown tables: results.md files and terminal tables of evaluate, sanity, localisation and
the study (shared plumbing: the report is one of their readers, not their owner)."""
from typing import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """The same table for a results.md file (the CLI's evaluate and study write one)."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])
