"""The one look of every report.md: title, facts, body, figures, next commands."""

from __future__ import annotations

from pathlib import Path

from domainssl.reports import markdown_table, write_report


def test_a_report_has_title_facts_table_figures_and_next_commands(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    table = markdown_table(["class", "F1"], [("forest", "0.9100"), ("river", "0.8000")])
    write_report(out, "Transfer", ["Test: **0.9**."], table, [("curves", "curves.png")],
                 ["domainssl infer out/ scene.tif --out x.tif"])  # fmt: skip
    assert out.read_text().splitlines() == [
        "# Transfer",
        "",
        "- Test: **0.9**.",
        "",
        "| class | F1 |",
        "|---|---|",
        "| forest | 0.9100 |",
        "| river | 0.8000 |",
        "",
        "![curves](curves.png)",
        "",
        "## Next",
        "",
        "```bash",
        "domainssl infer out/ scene.tif --out x.tif",
        "```",
    ]
