"""The report as Markdown, its plots as SVG files in ``<name>_files/`` beside it
(GitHub renders both)."""

from __future__ import annotations

from pathlib import Path

import harness
from harness_plugins.reporters.report_data import PageReporter, write_svgs
from harness_plugins.reporters.report_model import Node, Report, Table


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def _table(table: Table) -> list[str]:
    lines = [f"*{table.caption}*", ""] if table.caption else []
    lines.append("| " + " | ".join(_cell(c) for c in table.columns) + " |")
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.rows]
    return lines + [""]


def _tree(nodes: list[Node], depth: int = 0) -> list[str]:
    """A nested list, two spaces of indent per level."""
    lines = []
    for node in nodes:
        detail = f" ({node.detail})" if node.detail else ""
        lines.append(f"{'  ' * depth}- **{node.name}**{detail}")
        lines += _tree(node.children, depth + 1)
    return lines


def render_markdown(report: Report, figures: dict[str, str]) -> str:
    """``figures``: each figure's name -> its path relative to the Markdown file."""
    lines = [f"# {report.title}", ""]
    lines += [f"- **{key}**: {value}" for key, value in report.facts]
    lines.append("")
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        if section.text:
            lines += [section.text, ""]
        if section.tree:
            lines += [*_tree(section.tree), ""]
        for figure in section.figures:
            lines += [f"![{figure.title}]({figures[figure.name]})", ""]
        for table in section.tables:
            lines += _table(table)
    return "\n".join(lines)


class MarkdownReporter(PageReporter):
    suffix = ".md"

    def write(self, report: Report, out: Path) -> str:
        folder = out.with_name(f"{out.stem}_files")
        paths = write_svgs(report, folder)
        return render_markdown(report, {name: f"{folder.name}/{path.name}"
                                        for name, path in paths.items()})


@harness.hookimpl
def harness_register_reporters(register):
    register("markdown", MarkdownReporter)
