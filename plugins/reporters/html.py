"""The report as one self-contained HTML page: inline CSS, inline SVG plots, no script
and nothing fetched, so it opens anywhere, offline, and can be mailed as one file."""

from __future__ import annotations

import html
from pathlib import Path

import harness
from harness_plugins.reporters.report_data import PageReporter
from harness_plugins.reporters.report_model import DECISIONS, Node, Report, Table

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem;
       border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .85rem; }
th, td { border: 1px solid #d0d0d0; padding: .25rem .55rem; text-align: left;
         vertical-align: top; }
th { background: #f2f4f7; } tr:nth-child(even) td { background: #fafafa; }
caption { caption-side: top; text-align: left; color: #555; padding: .2rem 0; }
figure { margin: 1rem 0; } figure svg { max-width: 100%; height: auto; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .1rem 1rem; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
.scroll { overflow-x: auto; }
ul.tree, ul.tree ul { list-style: none; padding-left: 1.4rem; margin: .2rem 0; }
ul.tree { padding-left: 0; } ul.tree ul { border-left: 1px solid #ccc; }
ul.tree .detail { color: #555; }
tr td.go { background: #d9f2dc; } tr td.no-go { background: #f8d2d0; font-weight: 600; }
tr td.inconclusive { background: #fcefc4; }
"""


def render_html(report: Report) -> str:
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(report.title)}</title>", f"<style>{_STYLE}</style>",
        "</head>", "<body>", f"<h1>{html.escape(report.title)}</h1>", '<dl class="facts">',
    ]
    for key, value in report.facts:
        parts.append(f"<dt>{html.escape(key)}</dt><dd>{html.escape(value)}</dd>")
    parts.append("</dl>")
    for section in report.sections:
        anchor = section.title.lower().replace(" ", "-")
        parts.append(f'<section id="{html.escape(anchor)}"><h2>{html.escape(section.title)}</h2>')
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        if section.tree:
            parts.append(_tree(section.tree, 'class="tree"'))
        for figure in section.figures:
            parts.append(f'<figure aria-label="{html.escape(figure.title)}">{figure.svg}'
                         "</figure>")
        for table in section.tables:
            parts.append(_table(table))
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _tree(nodes: list[Node], attributes: str = "") -> str:
    """Nested lists: each node's children in a list inside its item."""
    out = [f"<ul {attributes}>" if attributes else "<ul>"]
    for node in nodes:
        out.append(f"<li><strong>{html.escape(node.name)}</strong>")
        if node.detail:
            out.append(f' <span class="detail">({html.escape(node.detail)})</span>')
        if node.children:
            out.append(_tree(node.children))
        out.append("</li>")
    out.append("</ul>")
    return "".join(out)


def _table(table: Table) -> str:
    out = ['<div class="scroll"><table>']
    if table.caption:
        out.append(f"<caption>{html.escape(table.caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
               + "</tr></thead><tbody>")
    decisions = {table.columns.index(c) for c in table.decision_columns}
    for row in table.rows:
        out.append("<tr>" + "".join(_cell(v, i in decisions) for i, v in enumerate(row))
                   + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _cell(value: str, is_decision: bool) -> str:
    """A table cell; a gate decision gets its colour's class (go, no-go, inconclusive)."""
    if is_decision and value in DECISIONS:
        return f'<td class="{value.lower()}">{html.escape(value)}</td>'
    return f"<td>{html.escape(value)}</td>"


class HTMLReporter(PageReporter):
    suffix = ".html"

    def write(self, report: Report, out: Path) -> str:
        return render_html(report)


@harness.hookimpl
def harness_register_reporters(register):
    register("html", HTMLReporter)
