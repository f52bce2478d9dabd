"""The one look of every report.md the tool writes (pretrain, transfer, infer, embed):
a title, the headline facts as a bullet list, tables, figures, then the next commands."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from domainssl.io import atomic_write, atomic_write_text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A GitHub-flavoured markdown table, one line per row."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]


def write_report(
    path: Path,
    title: str,
    facts: Sequence[str],
    body: Sequence[str] = (),
    figures: Sequence[tuple[str, str]] = (),
    next_commands: Sequence[str] = (),
) -> None:
    """Write ``report.md``: ``# title``, the facts as bullets, ``body`` lines (tables,
    notes), figures as ``(caption, relative path)``, and a "Next" block of shell commands."""
    lines = [f"# {title}", "", *(f"- {fact}" for fact in facts), ""]
    if body:
        lines += [*body, ""]
    lines += [line for caption, file in figures for line in (f"![{caption}]({file})", "")]
    if next_commands:
        lines += ["## Next", "", "```bash", *next_commands, "```", ""]
    atomic_write_text(path, "\n".join(lines))


def save_figure(figure: Any, path: Path, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi))
    plt.close(figure)
