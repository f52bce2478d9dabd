"""Write a named section of bench/results.md (between HTML comment markers)."""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).parent / "results.md"


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the section ``name`` of results.md with ``markdown``."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = f"<!-- {name} -->\n{markdown.strip()}\n<!-- /{name} -->"
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else f"{text.rstrip()}\n\n{block}\n"
    )
    RESULTS.write_text(text)
