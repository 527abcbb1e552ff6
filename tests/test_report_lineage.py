"""Reports of an experiment: the lineage tree, the sweep table, seed variation, forgetting
against the parent and the gate, in the HTML and Markdown pages and on the console.

One suite runs once for the module: ``lora-a`` on the base, ``dpo`` trained on ``lora-a``,
and a LoRA sweep over ``r`` with two seeds per value. A copy of its store then gets a
NO-GO decision and a recipe comparison beyond seed noise written in, so that what those
look like does not depend on how the tiny model happens to train.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from harness import ReportContext, query
from harness.cli import main
from tests.conftest import PREFERENCE_ROWS as PREFERENCES
from tests.conftest import small_suite, write_jsonl

EXPERIMENT = """
[[tuners]]
name = "sweep"
method = "lora"
data = "data/sft.jsonl"
seeds = [0, 1]
options = { alpha = 8, steps = 2, batch_size = 4, max_length = 64 }
[tuners.sweep]
r = [2, 4]

[[tuners]]
name = "dpo"
method = "dpo"
from = "lora-a"
data = "data/pref.jsonl"
options = { r = 4, alpha = 8, steps = 2, lr = 1e-4, batch_size = 4, max_length = 64 }

[gate]
max_loss = { mc = 0.05, text = 0.1 }
"""
SWEPT = ["sweep-r2-seed0", "sweep-r2-seed1", "sweep-r4-seed0", "sweep-r4-seed1"]
#: what the planted store says of dpo on mc
NO_GO_REASON = "the loss 0.5 is significant (Holm p 0.004) and above max_loss 0.05"


@pytest.fixture(scope="module")
def stores(tmp_path_factory, harness_cache):
    """The experiment's store, and a copy with a NO-GO for dpo on mc and one recipe
    comparison beyond seed noise."""
    from rich.console import Console

    from harness.runner import run_suite

    root = tmp_path_factory.mktemp("lineage")
    suite = small_suite(root, extra=EXPERIMENT)
    write_jsonl(root / "data" / "pref.jsonl", PREFERENCES)
    with open(os.devnull, "w") as quiet:
        summary = run_suite(suite, console=Console(file=quiet), show_progress=False)
    assert summary.failed == 0
    planted = root / "planted.duckdb"
    shutil.copy(summary.store_path, planted)
    with duckdb.connect(str(planted)) as con:
        con.execute("""
            UPDATE gate_decisions
            SET loss = 0.5, ci_low = 0.3, ci_high = 0.7, p_value = 0.001, p_holm = 0.004,
                decision = 'NO-GO', reason = ?
            WHERE variant = 'dpo' AND evaluator = 'mc'""", [NO_GO_REASON])
        recipe = dict(con.execute("SELECT name, recipe_key FROM variants").fetchall())
        con.execute("DELETE FROM recipe_tests")
        con.execute("""
            INSERT INTO recipe_tests VALUES
            ('small', 'tiny', 'mc', 'acc', ?, ?, 2, 2, 0.5, 0.1, 0.01, 0.02, 0.4, 25.3, 1.5,
             0.001),
            ('small', 'tiny', 'text', 'perplexity', ?, ?, 2, 2, 500, 501, 1, 1, -1, -1, 2, 0.5)
            """, [recipe["sweep-r2-seed0"], recipe["sweep-r4-seed0"]] * 2)
    return summary.store_path, planted


def report(store: Path, fmt: str, out: Path) -> str:
    """The text of ``harness report STORE --format FMT``."""
    result = CliRunner().invoke(main, ["report", str(store), "--format", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out.read_text()


@pytest.fixture(scope="module")
def pages(stores, tmp_path_factory):
    """Both pages of both stores: pages[store][fmt], store "run" or "planted"."""
    folder = tmp_path_factory.mktemp("pages")
    return {name: {fmt: report(store, fmt, folder / f"{name}.{fmt}") for fmt in ("md", "html")}
            for name, store in zip(("run", "planted"), stores)}


def section(markdown: str, title: str) -> str:
    """One ``## title`` section of a Markdown page, up to the next."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


def table_rows(markdown: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in markdown.splitlines() if line.startswith("| ")]


def markdown_parents(markdown: str) -> dict[str, str | None]:
    """Each name in a nested Markdown list -> the name of the item it is nested under."""
    parents: dict[str, str | None] = {}
    open_items: list[str] = []  # the names along the current path, outermost first
    for line in markdown.splitlines():
        match = re.match(r"( *)- \*\*(.+?)\*\*", line)
        if match:
            depth = len(match.group(1)) // 2
            del open_items[depth:]
            parents[match.group(2)] = open_items[-1] if open_items else None
            open_items.append(match.group(2))
    return parents


class TreeParents(HTMLParser):
    """Each name in the page's ``<ul class="tree">`` -> the name of the item it is in."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.parents: dict[str, str | None] = {}
        self.open_items: list[str | None] = []  # the <li> names along the current path
        self.lists = 0  # open <ul> of the tree; 0: outside it
        self.in_name = False
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "ul" and (self.lists or ("class", "tree") in attrs):
            self.lists += 1
        elif tag == "li" and self.lists:
            self.open_items.append(None)
        elif tag == "strong" and self.lists:
            self.in_name = True

    def handle_endtag(self, tag):
        if tag == "ul" and self.lists:
            self.lists -= 1
        elif tag == "li" and self.lists:
            self.open_items.pop()
        elif tag == "strong":
            self.in_name = False

    def handle_data(self, data):
        if self.in_name:
            self.open_items[-1] = data
            self.parents[data] = self.open_items[-2] if len(self.open_items) > 1 else None


def test_sections_appear_in_order(pages):
    titles = re.findall(r"^## (.+)$", pages["run"]["md"], re.M)
    assert titles == ["Leaderboard", "Lineage", "Sweep", "Seed variation", "Forgetting",
                      "Forgetting against the parent", "Gate", "Learning versus forgetting",
                      "Training", "Contamination", "Clean versus full scores"]
    html_titles = re.findall(r"<h2>(.+?)</h2>", pages["run"]["html"])
    assert html_titles == titles


def test_lineage_nests_each_child_under_its_parent(pages):
    expected = {"base": None, "lora-a": "base", "dpo": "lora-a",
                **{name: "base" for name in SWEPT}}
    lineage = section(pages["run"]["md"], "Lineage")
    assert markdown_parents(lineage) == expected
    assert TreeParents(pages["run"]["html"]).parents == expected
    # method, seed and swept value beside each name
    assert "\n    - **dpo** (dpo; seed 0)\n" in lineage
    assert "\n  - **sweep-r4-seed1** (lora; seed 1; r = 4)\n" in lineage
    assert "<strong>sweep-r2-seed0</strong> <span class=\"detail\">(lora; seed 0; r = 2)" \
        in pages["run"]["html"]


def test_sweep_table_has_a_column_per_swept_option(pages, stores):
    sweep = section(pages["run"]["md"], "Sweep")
    assert "| recipe | r | mc | text |" in sweep
    rows = {row[1]: row for row in table_rows(sweep)[1:]}
    assert sorted(rows) == ["2", "4"]  # one row per swept value, lora-a and dpo left out
    _, scores = query(stores[0], "SELECT variant, evaluator, value FROM leaderboard")
    score = {(variant, evaluator): value for variant, evaluator, value in scores}
    for r in ("2", "4"):
        assert rows[r][0] == "sweep"
        for column, evaluator in ((2, "mc"), (3, "text")):
            mean, n = re.fullmatch(r"(\S+) ± \S+ \(n = (\d)\)", rows[r][column]).groups()
            seeds = [score[f"sweep-r{r}-seed{seed}", evaluator] for seed in (0, 1)]
            assert n == "2" and float(mean) == pytest.approx(sum(seeds) / 2, rel=1e-3)
    assert "<th>recipe</th><th>r</th><th>mc</th><th>text</th>" in pages["run"]["html"]


def test_seed_variation_lists_recipes_with_seeds_and_comparisons_beyond_noise(pages):
    seeds = section(pages["planted"]["md"], "Seed variation")
    recipes = {(row[0], row[1]) for row in table_rows(seeds) if row[3] == "2"}
    assert recipes == {(f"sweep (r = {r})", e) for r in (2, 4) for e in ("mc", "text")}
    assert "1 of 2 comparisons" in seeds  # the text comparison, p = 0.5, is left out
    [comparison] = [row for row in table_rows(seeds) if row[0] == "mc" and len(row) == 8]
    assert comparison == ["mc", "acc", "sweep (r = 2)", "sweep (r = 4)", "0.5 ± 0.01 (n = 2)",
                          "0.1 ± 0.02 (n = 2)", "0.4", "0.001"]


def test_forgetting_against_the_parent_is_beside_forgetting(pages, stores):
    text = section(pages["run"]["md"], "Forgetting against the parent")
    rows = table_rows(text)
    assert rows[0][:4] == ["variant", "parent", "evaluator", "metric"]
    assert sorted((row[0], row[1], row[2]) for row in rows[1:]) == [
        ("dpo", "lora-a", "mc"), ("dpo", "lora-a", "text")]
    _, [(loss,)] = query(stores[0], "SELECT loss FROM parent_forgetting WHERE evaluator = 'mc'")
    [mc] = [row for row in rows if row[2] == "mc"]
    assert float(mc[rows[0].index("loss")]) == pytest.approx(loss, abs=1e-3)


def test_gate_shows_the_no_go_variant_and_its_evaluator(pages):
    gate = section(pages["planted"]["md"], "Gate")
    rows = table_rows(gate)
    verdicts = {row[0]: row[1] for row in rows if len(row) == 3}
    assert verdicts["dpo"] == "NO-GO"
    assert set(verdicts) == {"variant", "dpo", "lora-a", *SWEPT}
    assert all(verdicts[name] in ("GO", "INCONCLUSIVE") for name in ["lora-a", *SWEPT])
    [no_go] = [row for row in rows if row[:2] == ["dpo", "mc"]]
    assert no_go == ["dpo", "mc", "acc", "6", "0.5", "[0.3, 0.7]", "0.05", "0.004", "NO-GO",
                     NO_GO_REASON]

    page = pages["planted"]["html"]
    assert '<tr><td>dpo</td><td class="no-go">NO-GO</td>' in page
    assert page.count('<td class="no-go">') == 2  # the variant's row and its mc row
    assert re.search(r'<tr><td>lora-a</td><td class="(go|inconclusive)">', page)


def console_text(store: Path) -> str:
    from rich.console import Console

    from harness_plugins.reporters.console import ConsoleReporter

    out = io.StringIO()
    reporter = ConsoleReporter(ConsoleReporter.Options())
    reporter.report(ReportContext(store, None, "small", Console(file=out, width=250)))
    return out.getvalue()


def test_console_prints_one_gate_row_per_variant(stores):
    text = console_text(stores[1])
    assert text.index("Leaderboard") < text.index("Forgetting") < text.index("Gate")
    gate = text[text.index("Gate"):]
    # a table row starts with a border; a long reason wraps onto lines without a variant
    rows = [line for line in gate.splitlines()
            if line.startswith("│") and line.split("│")[2].strip()]
    assert [row.split("│")[2].strip() for row in rows] == ["dpo", "lora-a", *SWEPT]
    [dpo] = [row for row in rows if row.split("│")[2].strip() == "dpo"]
    assert dpo.split("│")[3].strip() == "NO-GO"
    assert f"mc: {NO_GO_REASON}" in dpo and "text:" not in dpo  # the deciding reason only


def test_no_gate_and_no_experiment_no_such_sections(stores, tmp_path):
    """A store without gate decisions prints and reports no gate; one whose variants were
    each trained once on the base shows no lineage, sweep or seeds."""
    plain = tmp_path / "plain.duckdb"
    shutil.copy(stores[0], plain)
    with duckdb.connect(str(plain)) as con:
        con.execute("DELETE FROM gate_decisions")
        con.execute("DELETE FROM recipe_tests")
        con.execute("DELETE FROM variants WHERE name <> 'lora-a'")
        con.execute("DELETE FROM cells WHERE variant_name NOT IN ('base', 'lora-a')")
    assert "Gate" not in console_text(plain)
    titles = re.findall(r"^## (.+)$", report(plain, "md", tmp_path / "plain.md"), re.M)
    assert titles == ["Leaderboard", "Forgetting", "Learning versus forgetting", "Training",
                      "Contamination", "Clean versus full scores"]
