"""`harness report`: the HTML page in a real headless browser, and the Markdown page."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main
from tests.conftest import planted_suite

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: the same items as a target evaluator too, so that learning can be plotted against forgetting
TARGET = """
[[evaluators]]
name = "mc-target"
kind = "benchmark"
data = "data/mc.jsonl"
role = "target"
"""
#: every variant here is tuned once on the base: no lineage, sweep or seed sections, and
#: the gate judges lora-a
SECTIONS = ["Leaderboard", "Forgetting", "Gate", "Learning versus forgetting", "Training",
            "Contamination", "Clean versus full scores"]


@pytest.fixture(scope="module")
def reported(tmp_path_factory, harness_cache):
    """A finished suite with a planted item, and its two reports."""
    from rich.console import Console

    from harness.runner import run_suite

    root = tmp_path_factory.mktemp("report")
    suite = planted_suite(root, extra=TARGET)
    with open(os.devnull, "w") as quiet:
        summary = run_suite(suite, console=Console(file=quiet), show_progress=False)
    assert summary.failed == 0
    runner = CliRunner()
    pages = {}
    for fmt in ("html", "md"):
        result = runner.invoke(main, ["report", str(suite), "--format", fmt])
        assert result.exit_code == 0, result.output
        pages[fmt] = Path(re.search(r"report: (\S+)", result.output).group(1))
    return suite, summary.store_path, pages


def test_markdown_report_has_every_section_table_and_plot(reported):
    _, store, pages = reported
    page = pages["md"]
    assert page == store.with_name("small.report.md")
    text = page.read_text()
    assert re.findall(r"^## (.+)$", text, re.M) == SECTIONS
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert [Path(i).name for i in images] == ["forgetting.svg", "learning_forgetting.svg",
                                              "training.svg"]
    for image in images:
        assert (page.parent / image).read_text().startswith("<svg")
    assert "| variant | method | mc | mc-target | text |" in text
    flagged = [line for line in text.splitlines() if line.startswith("| lora-a | mc | mc-3 |")]
    assert flagged and "exact 1.0" in flagged[0] and "What is 3 + 3?" in flagged[0]


def test_html_report_is_one_file_with_nothing_fetched(reported):
    page = reported[2]["html"]
    text = page.read_text()
    assert text.count("<svg") == 3 and "<script" not in text
    assert not re.search(r"""(src|href)=["']?(https?:|//|[^"'#]+\.(png|svg|css|js))""", text)


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("HARNESS_REQUIRE_BROWSER"),
                    reason="no chromium here (CI installs it and sets HARNESS_REQUIRE_BROWSER)")
def test_html_report_renders_in_headless_chromium(reported, tmp_path):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "HARNESS_REQUIRE_BROWSER is set but chromium is not installed"
    page_path = reported[2]["html"]
    messages, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load")
            headings = page.locator("h2").all_inner_texts()
            tables = page.locator("table").count()
            plots = [page.locator("figure svg").nth(i).bounding_box() for i in range(3)]
            cells = page.locator("td").all_inner_texts()
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert [m for m in messages if m.startswith(("error", "pageerror", "warning"))] == []
    assert requests == [page_path.as_uri()]  # the page itself, nothing else
    assert headings == SECTIONS
    assert tables >= 7
    assert all(box and box["width"] > 200 and box["height"] > 150 for box in plots)
    assert "mc-3" in cells
    _assert_screenshot_shows_plots(shot)


def _assert_screenshot_shows_plots(path: Path) -> None:
    """The full-page screenshot is tall, mostly light, and holds the heat map's colours."""
    from matplotlib.image import imread

    pixels = imread(path)[..., :3]
    height, width, _ = pixels.shape
    assert width == 1280 and height > 2000
    light = (pixels.min(axis=-1) > 0.9).mean()
    assert 0.5 < light < 0.99
    red = (pixels[..., 0] > 0.6) & (pixels[..., 2] < 0.4)
    blue = (pixels[..., 2] > 0.6) & (pixels[..., 0] < 0.4)
    assert red.sum() + blue.sum() > 500  # coloured squares, points and lines drawn


def test_report_errors_are_one_line_with_status_2(reported, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(main, ["report", str(tmp_path / "none.duckdb"), "--format", "html"])
    assert missing.exit_code == 2 and "no such store" in missing.output
    suite, store, _ = reported
    wrong = runner.invoke(main, ["report", str(store), "--name", "other"])
    assert wrong.exit_code == 2 and "no suite named 'other'" in wrong.output
    out = tmp_path / "elsewhere" / "page.html"
    named = runner.invoke(main, ["report", str(store), "--format", "html", "--out", str(out)])
    assert named.exit_code == 0 and out.is_file()


def test_a_long_flagged_list_shows_its_first_40_items_with_their_texts(reported, tmp_path):
    """More than 40 flagged items: the report lists the first 40 (by variant, evaluator and
    item), each with its text, and says how many there are in all."""
    from harness.store import ContaminationRow, Store, query

    _, store_path, _ = reported
    copy = tmp_path / store_path.name
    shutil.copy(store_path, copy)
    _, flagged = query(copy, "SELECT DISTINCT suite, model, variant, variant_key, evaluator, "
                             "evaluator_key FROM contamination WHERE flagged")
    _, items = query(copy, "SELECT count(DISTINCT item_index) FROM samples")
    head = flagged[0]
    extra = [ContaminationRow("planted-many", *head, 1000 + i, f"extra-{i:03d}", "data.jsonl",
                              "ngram-13", 0.9, True, "{}") for i in range(60)]
    Store(copy).write_contamination([], extra)
    _, (total,) = query(copy, "SELECT count(*) FROM (SELECT DISTINCT variant_key, "
                              "evaluator_key, item_index FROM contamination WHERE flagged)")
    assert total[0] > 40 + items[0][0] // 2
    result = CliRunner().invoke(main, ["report", str(copy), "--format", "md"])
    assert result.exit_code == 0, result.output
    text = Path(re.search(r"report:\s+(\S+)", result.output).group(1)).read_text()
    assert f"Flagged items (the first 40 of {total[0]})" in text
    after = text[text.index("Flagged items"):].splitlines()
    start = next(i for i, line in enumerate(after) if line.startswith("|"))
    end = next(i for i in range(start, len(after)) if not after[i].startswith("|"))
    table = after[start:end]
    assert len(table) == 2 + 40  # header, rule, 40 items
    # the planted item keeps its text; the added ones have no sample, so no text
    assert "What is 3 + 3?" in table[2]
