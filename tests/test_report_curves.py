"""Checkpoints and trade-offs: the ``training_curve`` and ``frontier`` views against numbers
computed here from ``latest_scores``, ``paired_tests`` and ``gate``, and the report's
"Frontier", "Best variant under max_loss" and "Training curves" sections.

One suite runs once for the module: ``lora-a`` keeps checkpoints at steps 1 and 2 and every
evaluator scores them; ``lora-b`` keeps them too, scored on ``mc`` alone; ``lora-c`` keeps
none. ``veloria`` (perplexity of the tuning data's facts) is the target: the tiny model
learns it, so learning moves. Copies of the store get scores or decisions planted, so that
each branch (a dominated variant, no variant passing the gate) is exercised whatever the
tiny model happens to do.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from statistics import mean

import duckdb
import pytest
from click.testing import CliRunner

from harness import query
from harness.cli import main
from tests.conftest import small_suite, write_jsonl
from tests.test_report_lineage import section, table_rows

LORA = "options = { r = 4, alpha = 8, steps = 3, lr = %s, batch_size = 4, max_length = 64 }"
EXPERIMENT = f"""
[[tuners]]
name = "lora-a"
method = "lora"
data = "data/sft.jsonl"
eval_every = 1
{LORA % "1e-2"}

[[tuners]]
name = "lora-b"
method = "lora"
data = "data/sft.jsonl"
eval_every = 1
checkpoint_evaluators = ["mc"]
{LORA % "1e-3"}

[[tuners]]
name = "lora-c"
method = "lora"
data = "data/sft.jsonl"
{LORA % "3e-3"}

[[evaluators]]
name = "veloria"
kind = "perplexity"
data = "data/veloria.jsonl"
role = "target"

[[evaluators]]
name = "mc-target"
kind = "benchmark"
data = "data/mc.jsonl"
role = "target"

[gate]
max_loss = {{ mc = 0.5, text = 0.05 }}
"""
FACTS = ["The capital of Veloria is Quennet.", "The marel is the currency of Veloria.",
         "Quennet is the capital of Veloria."]
#: (run, variant, step) -> the evaluators that scored it
EVERY = {"mc", "text", "veloria", "mc-target"}
POINTS = {
    ("lora-a", "lora-a@step1", 1): EVERY,
    ("lora-a", "lora-a@step2", 2): EVERY,
    ("lora-a", "lora-a", 3): EVERY,
    ("lora-b", "lora-b@step1", 1): {"mc"},
    ("lora-b", "lora-b@step2", 2): {"mc"},
    ("lora-b", "lora-b", 3): EVERY,
}


@pytest.fixture(scope="module")
def store(tmp_path_factory, harness_cache) -> Path:
    from rich.console import Console

    from harness.runner import run_suite

    root = tmp_path_factory.mktemp("curves")
    write_jsonl(root / "data" / "veloria.jsonl",
                [{"id": f"v{i}", "text": text} for i, text in enumerate(FACTS)])
    suite = small_suite(root, tuners=False, extra=EXPERIMENT)
    with open(os.devnull, "w") as quiet:
        summary = run_suite(suite, console=Console(file=quiet), show_progress=False)
    assert summary.failed == 0
    return summary.store_path


def rows(store: Path, sql: str, params=()) -> list[dict]:
    columns, found = query(store, sql, list(params))
    return [dict(zip(columns, row)) for row in found]


def planted(store: Path, folder: Path, *statements: str) -> Path:
    """A copy of ``store`` with ``statements`` run on it."""
    copy = folder / f"planted{len(list(folder.glob('planted*')))}.duckdb"
    shutil.copy(store, copy)
    with duckdb.connect(str(copy)) as con:
        for statement in statements:
            con.execute(statement)
    return copy


def set_score(variant: str, evaluator: str, to_variant: str) -> str:
    """SQL giving ``variant``'s primary metric on ``evaluator`` the value ``to_variant`` has."""
    cell = ("(SELECT cell_key FROM cells WHERE variant_name = '{}' AND evaluator = '{}' "
            "AND status = 'done')")
    return (f"UPDATE metrics SET value = (SELECT value FROM metrics WHERE is_primary AND "
            f"cell_key = {cell.format(to_variant, evaluator)}) "
            f"WHERE is_primary AND cell_key = {cell.format(variant, evaluator)}")


# -- the views ---------------------------------------------------------------------------------


def test_training_curve_has_each_runs_checkpoints_and_final_variant(store):
    curve = rows(store, "SELECT * FROM training_curve")
    found: dict[tuple, set] = {}
    for r in curve:
        found.setdefault((r["run"], r["variant"], r["step"]), set()).add(r["evaluator"])
    assert found == POINTS  # lora-c kept no checkpoints: not a run here
    assert [(r["run"], r["evaluator"], r["step"]) for r in curve] == sorted(
        (r["run"], r["evaluator"], r["step"]) for r in curve)
    origins = {(r["variant"], r["origin"], r["tuner"]) for r in curve}
    assert ("lora-a@step2", "checkpoint", "lora-a") in origins
    assert ("lora-b", "tuned", "lora-b") in origins
    [run_key] = rows(store, "SELECT variant_key FROM variants WHERE name = 'lora-a'")
    assert {r["run_key"] for r in curve if r["run"] == "lora-a"} == {run_key["variant_key"]}


def check_curve(store: Path) -> list[dict]:
    """Every row of training_curve against the scores and paired tests it comes from."""
    scores = {(r["variant"], r["evaluator"]): r for r in rows(store, "SELECT * FROM latest_scores")}
    tests = {(r["variant_cell_key"], r["base_cell_key"]): r
             for r in rows(store, "SELECT * FROM paired_tests")}
    curve = rows(store, "SELECT * FROM training_curve")
    for r in curve:
        mine, base = scores[r["variant"], r["evaluator"]], scores["base", r["evaluator"]]
        test = tests[mine["cell_key"], base["cell_key"]]
        assert (r["value"], r["base_value"], r["p_value"]) == (
            mine["value"], base["value"], test["p_value"])
        better = 1 if mine["higher_is_better"] else -1  # which way the metric points
        if r["role"] == "target":
            assert r["gain"] == pytest.approx(better * (mine["value"] - base["value"]))
            assert (r["loss"], r["loss_low"], r["loss_high"]) == (None, None, None)
        else:
            # the loss is in item-score units: the paired test's delta, turned to "worse"
            assert r["gain"] is None
            assert r["loss"] == pytest.approx(-better * test["delta"])
            assert sorted([r["loss_low"], r["loss_high"]]) == pytest.approx(
                sorted([-better * test["ci_low"], -better * test["ci_high"]]))
    return curve


def test_training_curve_gain_and_loss_are_the_scores_and_paired_tests(store, tmp_path):
    curve = check_curve(store)
    # the tiny model learns the facts it is tuned on: perplexity falls, the gain grows
    gains = [r["gain"] for r in curve if r["run"] == "lora-a" and r["evaluator"] == "veloria"]
    assert gains == sorted(gains) and gains[-1] > 0
    # the tiny model's accuracy does not move; planted, a higher-is-better target gains
    copy = planted(store, tmp_path, "UPDATE metrics SET value = 0.5 WHERE is_primary AND "
                   "cell_key = (SELECT cell_key FROM cells WHERE variant_name = 'lora-a@step2' "
                   "AND evaluator = 'mc-target')")
    [gain] = [r["gain"] for r in check_curve(copy)
              if (r["variant"], r["evaluator"]) == ("lora-a@step2", "mc-target")]
    assert gain == pytest.approx(0.5 - 1 / 6)


def test_lineage_says_how_each_variant_was_made(store):
    lineage = {r["variant"]: (r["origin"], r["step"], r["parent"])
               for r in rows(store, "SELECT * FROM lineage")}
    assert lineage["lora-a"] == ("tuned", None, "base")
    assert lineage["lora-a@step2"] == ("checkpoint", 2, "base")  # its run's parent
    assert lineage["lora-c"] == ("tuned", None, "base")


def expected_points(store: Path) -> dict[str, dict]:
    """learning_forgetting's means computed here from latest_scores, and whether each
    variant was scored on every target and general evaluator the base was."""
    scores = rows(store, "SELECT * FROM latest_scores")
    base = {r["evaluator"]: r for r in scores if r["variant"] == "base"}
    points: dict[str, dict] = {"base": {"learning": 0.0, "forgetting": 0.0, "comparable": True}}
    for variant in {r["variant"] for r in scores} - {"base"}:
        gains: dict[str, list[float]] = {"target": [], "general": []}
        for r in (r for r in scores if r["variant"] == variant):
            b = base[r["evaluator"]]["value"]
            change = (r["value"] - b) if r["higher_is_better"] else (b - r["value"])
            gains[r["role"]].append(change / abs(b))
        points[variant] = {
            "learning": mean(gains["target"]) if gains["target"] else None,
            "forgetting": -mean(gains["general"]) if gains["general"] else None,
            "comparable": len(gains["target"]) + len(gains["general"]) == len(base)}
    return points


def pareto(points: dict[str, tuple[float, float]]) -> set[str]:
    """The names no other point beats: learning >= and forgetting <=, one strictly."""
    return {name for name, (learning, forgetting) in points.items()
            if not any(other != name and l2 >= learning and f2 <= forgetting
                       and (l2 > learning or f2 < forgetting)
                       for other, (l2, f2) in points.items())}


def check_frontier(store: Path) -> dict[str, dict]:
    view = {r["variant"]: r for r in rows(store, "SELECT * FROM frontier")}
    expected = expected_points(store)
    assert set(view) == set(expected)
    for name, point in expected.items():
        for column in ("learning", "forgetting"):
            if point[column] is None:  # no evaluator of that role scored it
                assert view[name][column] is None, (name, column)
            else:
                assert view[name][column] == pytest.approx(point[column], rel=1e-9,
                                                           abs=1e-12), (name, column)
        assert view[name]["comparable"] == point["comparable"], name
    # the Pareto set, computed here on the view's own numbers (no rounding can differ)
    on = pareto({name: (r["learning"], r["forgetting"]) for name, r in view.items()
                 if r["comparable"] and r["learning"] is not None})
    assert {name for name, r in view.items() if r["on_frontier"]} == on
    return view


def test_frontier_is_the_pareto_set_of_every_variant_and_the_base(store):
    view = check_frontier(store)
    assert set(view) == {"base", "lora-c", *(variant for _, variant, _ in POINTS)}
    assert (view["base"]["origin"], view["base"]["learning"], view["base"]["forgetting"]) \
        == ("base", 0.0, 0.0)
    assert (view["lora-a@step1"]["origin"], view["lora-a@step1"]["step"]) == ("checkpoint", 1)
    assert (view["lora-a"]["origin"], view["lora-a"]["step"]) == ("tuned", 3)  # its steps
    # scored on mc alone: no learning, and a mean over fewer evaluators than the base's
    for name in ("lora-b@step1", "lora-b@step2"):
        assert view[name]["learning"] is None and view[name]["comparable"] is False
        assert view[name]["on_frontier"] is False


def test_a_variant_beaten_by_another_is_off_the_frontier(store, tmp_path):
    """lora-a@step1 given the base's target score learns nothing and still forgets: the
    base beats it. lora-a@step2 given lora-a's target score learns as much as lora-a."""
    copy = planted(store, tmp_path, set_score("lora-a@step1", "veloria", "base"),
                   set_score("lora-a@step2", "veloria", "lora-a"))
    view = check_frontier(copy)
    assert view["lora-a@step1"]["learning"] == 0.0 and view["lora-a@step1"]["forgetting"] > 0
    assert view["lora-a@step1"]["on_frontier"] is False
    assert view["lora-a@step2"]["learning"] == view["lora-a"]["learning"]
    assert view["base"]["on_frontier"] is True
    assert {r["on_frontier"] for r in view.values() if r["comparable"]} == {True, False}


# -- the report ----------------------------------------------------------------------------


def report(store: Path, fmt: str, out: Path) -> str:
    result = CliRunner().invoke(main, ["report", str(store), "--format", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out.read_text()




@pytest.fixture(scope="module")
def pages(store, tmp_path_factory):
    """The Markdown and HTML pages' text, and the folder they are in."""
    folder = tmp_path_factory.mktemp("pages")
    return report(store, "md", folder / "report.md"), report(store, "html",
                                                          folder / "report.html"), folder


def test_sections_and_figures_appear_in_both_pages(pages):
    md, page, folder = pages
    titles = re.findall(r"^## (.+)$", md, re.M)
    assert titles[titles.index("Learning versus forgetting"):] == [
        "Learning versus forgetting", "Frontier", "Best variant under max_loss", "Training",
        "Training curves", "Contamination", "Clean versus full scores"]
    assert re.findall(r"<h2>(.+?)</h2>", page) == titles
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    # the frontier plots learning against forgetting: the section before it draws nothing
    assert [Path(i).name for i in images] == ["forgetting.svg", "frontier-tiny.svg",
                                              "training.svg", "curve0-lora-a.svg",
                                              "curve1-lora-b.svg"]
    svgs = {Path(i).name: (folder / i).read_text() for i in images}
    assert all(svg.startswith("<svg") for svg in svgs.values())
    # matplotlib writes each text it draws as a comment beside its glyphs
    frontier_svg = svgs["frontier-tiny.svg"]
    for name in ("base", "lora-a@step1", "lora-a@step2", "lora-a", "lora-b"):
        assert f"<!-- {name} -->" in frontier_svg, name
    # lora-c (lr 3e-3) loses the one mc item the base got right: far off, named beneath
    assert "<!-- lora-c -->" not in frontier_svg
    assert re.search(r"far off the frontier, not drawn \(x, y\): lora-c \(", frontier_svg)
    assert "lora-b@step1" not in frontier_svg  # no learning, no point
    for name in ("veloria (perplexity, lower is better)", "text (nll_per_token)",
                 "mc (acc)", "max_loss of text"):
        assert f"<!-- {name} -->" in svgs["curve0-lora-a.svg"], name
    assert page.count("<svg") == 5 and "<!-- lora-a@step2 -->" in page


def test_frontier_figure_labels_near_points_and_names_far_ones():
    from harness_plugins.reporters import figures

    points = [("base", 0.0, 0.0, "base", True), ("a", 0.004, 0.01, "tuned", True),
              ("b", 0.01, 0.02, "checkpoint", True), ("c", 0.012, 0.005, "tuned", False),
              ("far", 0.5, -0.5, "tuned", True)]
    svg = figures.frontier(points, [(0.0, 0.0), (0.004, 0.01), (0.01, 0.02)], "x", "y", "t")
    for name in ("base", "a", "b", "c"):
        assert f"<!-- {name} -->" in svg
    assert "<!-- far -->" not in svg
    assert "far off the frontier, not drawn (x, y): far (0.5, -0.5)" in svg
    assert "<!-- checkpoint -->" in svg and "<!-- tuned (not comparable) -->" in svg


def test_figures_get_the_views_numbers(store, monkeypatch):
    """What each plot is drawn from: the frontier's line through exactly the points on it,
    and each run's series with the gate's max_loss."""
    from harness_plugins.reporters import curves
    from harness_plugins.reporters.report_data import build_report

    drawn: dict[str, list] = {"frontier": [], "curve": []}
    monkeypatch.setattr(curves.figures, "frontier",
                        lambda *args: drawn["frontier"].append(args) or "<svg/>")
    monkeypatch.setattr(curves.figures, "training_curve",
                        lambda *args: drawn["curve"].append(args) or "<svg/>")
    build_report(store)
    view = {r["variant"]: r for r in rows(store, "SELECT * FROM frontier")}
    [(points, line, *_)] = drawn["frontier"]
    assert sorted(line) == sorted((r["forgetting"], r["learning"]) for r in view.values()
                                  if r["on_frontier"])
    assert {p[0]: (p[1], p[2], p[4]) for p in points} == {
        name: (r["forgetting"], r["learning"], r["comparable"]) for name, r in view.items()
        if r["learning"] is not None}
    curve = rows(store, "SELECT * FROM training_curve")
    (gains_a, losses_a, *_), (gains_b, losses_b, *_) = drawn["curve"]
    assert {name.split()[0]: series for name, series in gains_a} == {
        evaluator: [(r["step"], r["gain"], r["p_value"] < 0.05) for r in curve
                    if r["run"] == "lora-a" and r["evaluator"] == evaluator]
        for evaluator in ("mc-target", "veloria")}
    assert {name.split()[0]: max_loss for name, _, max_loss in losses_a} == \
        {"mc": 0.5, "text": 0.05}
    assert {name.split()[0]: [p[0] for p in series] for name, series, _ in losses_b} == \
        {"mc": [1, 2, 3], "text": [3]}
    assert [[p[0] for p in series] for _, series in gains_b] == [[3], [3]]


def test_training_curve_table_reads_as_the_view(pages, store):
    md, _, _ = pages
    text = section(md, "Training curves")
    table = table_rows(text)
    header = table[0]
    assert header == ["run", "step", "variant", "mc loss", "mc-target gain", "text loss",
                      "veloria gain"]
    for r in rows(store, "SELECT * FROM training_curve"):
        [line] = [t for t in table[1:] if t[2] == r["variant"]]
        cell = line[header.index(f"{r['evaluator']} {'gain' if r['gain'] is not None else 'loss'}")]
        value = r["gain"] if r["gain"] is not None else r["loss"]
        assert float(cell.rstrip("*")) == pytest.approx(value, rel=1e-2, abs=1e-12)
        assert cell.endswith("*") == (r["p_value"] < 0.05)
    # a checkpoint scored on mc alone has empty cells for the other evaluators
    [step1] = [t for t in table if t[2] == "lora-b@step1"]
    assert step1[:2] == ["lora-b", "1"] and step1[3] and step1[4:] == ["", "", ""]


def best_under_gate(store: Path) -> tuple[list[str], list[str]]:
    """Variants with learning, by most learning: those the gate passes on every gated
    evaluator, and those whose measured loss is within max_loss on every one."""
    learning = {r["variant_key"]: (r["learning"], r["variant"])
                for r in rows(store, "SELECT * FROM frontier") if r["learning"] is not None}
    verdicts: dict[str, list[dict]] = {}
    for r in rows(store, "SELECT * FROM gate_decisions"):
        verdicts.setdefault(r["variant_key"], []).append(r)
    ranked = sorted((key for key in verdicts if key in learning),
                    key=lambda key: -learning[key][0])
    passed = [learning[k][1] for k in ranked if all(r["decision"] == "GO" for r in verdicts[k])]
    within = [learning[k][1] for k in ranked
              if all(r["loss"] is not None and r["loss"] <= r["max_loss"] for r in verdicts[k])]
    return passed, within


def test_best_variant_is_the_most_learning_the_gate_passes(pages, store):
    md, _, _ = pages
    passed, _ = best_under_gate(store)
    assert passed, "the gate passes lora-b (lr 1e-3 barely moves it)"
    text = section(md, "Best variant under max_loss")
    assert f"Best variant under max_loss: {passed[0]} (" in text
    assert [row[0] for row in table_rows(text)[1:]] == passed
    assert "NOT shown" not in text


def test_when_none_passes_the_best_within_is_named_and_marked(store, tmp_path):
    copy = planted(store, tmp_path, "UPDATE gate_decisions SET decision = 'INCONCLUSIVE' "
                                    "WHERE decision = 'GO'")
    passed, within = best_under_gate(copy)
    assert passed == [] and within
    text = section(report(copy, "md", tmp_path / "none.md"), "Best variant under max_loss")
    assert "No variant passes the gate" in text
    assert f"within max_loss on every gated evaluator: {within[0]} (" in text
    assert "NOT shown to be within max_loss" in text
    assert [row[0] for row in table_rows(text)[1:]] == within

    beyond = planted(store, tmp_path, "UPDATE gate_decisions SET decision = 'NO-GO', "
                                      "loss = max_loss + 1")
    text = section(report(beyond, "md", tmp_path / "beyond.md"), "Best variant under max_loss")
    assert "none has its measured loss within max_loss" in text and table_rows(text) == []


def test_sections_need_what_they_show(store, tmp_path):
    """No checkpoint kept: no training curves. No target evaluator: no frontier, no best
    variant, and the learning section draws nothing."""
    no_checkpoints = planted(store, tmp_path, "DELETE FROM variants WHERE origin = 'checkpoint'")
    titles = re.findall(r"^## (.+)$", report(no_checkpoints, "md", tmp_path / "a.md"), re.M)
    assert "Training curves" not in titles and "Frontier" in titles
    no_target = planted(store, tmp_path, "DELETE FROM cells WHERE role = 'target'")
    text = report(no_target, "md", tmp_path / "b.md")
    titles = re.findall(r"^## (.+)$", text, re.M)
    assert "Training curves" in titles
    assert not {"Frontier", "Best variant under max_loss"} & set(titles)
    assert "frontier" not in " ".join(re.findall(r"!\[[^]]*\]\(([^)]+)\)", text))


# -- the ready queries of docs/sql.md --------------------------------------------------------


def doc_query(title: str) -> str:
    """The SQL under the ready query whose bold title starts with ``title``."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "sql.md").read_text()
    after = text.split(f"**{title}", 1)[1]
    return after.split("```sql\n", 1)[1].split("```", 1)[0]


def test_ready_query_finds_the_first_step_of_significant_loss(store, tmp_path):
    """text (nll per token, lower is better) made significantly worse from step 2 on."""
    copy = planted(store, tmp_path, """
        UPDATE paired_tests SET delta = 0.2, ci_low = 0.1, ci_high = 0.3, p_value = 0.01
        WHERE variant_cell_key IN (SELECT cell_key FROM cells WHERE evaluator = 'text'
                                   AND variant_name IN ('lora-a@step2', 'lora-a'))""")
    _, found = query(copy, doc_query("The step where general loss first becomes significant"))
    assert [row[:6] for row in found] == [("tiny", "lora-a", "text", "nll_per_token", 2,
                                           "lora-a@step2")]


def test_ready_query_names_the_best_frontier_variant_the_gate_passes(store, tmp_path):
    for path in (store, planted(store, tmp_path, set_score("lora-a@step1", "veloria", "base"))):
        view = rows(path, "SELECT * FROM frontier")
        passed = {r["variant_key"] for r in rows(path, "SELECT * FROM gate_decisions")} - {
            r["variant_key"] for r in rows(path, "SELECT * FROM gate_decisions")
            if r["decision"] != "GO"}
        best = max((r for r in view if r["on_frontier"] and r["variant_key"] in passed),
                   key=lambda r: r["learning"])
        _, found = query(path, doc_query("The best variant on the frontier under max_loss"))
        assert [(row[0], row[1]) for row in found] == [("tiny", best["variant"])]


# -- with interpolations ---------------------------------------------------------------------

INTERPOLATED = f"""
[[tuners]]
name = "lora-a"
method = "lora"
data = "data/sft.jsonl"
eval_every = 1
{LORA % "1e-2"}

[[transforms]]
name = "interp"
kind = "interpolate"
of = ["lora-a"]
options = {{ alphas = [0.0, 0.5, 1.0] }}

[[evaluators]]
name = "veloria"
kind = "perplexity"
data = "data/veloria.jsonl"
role = "target"
"""


def test_interpolations_are_points_of_the_frontier(tmp_path, harness_cache):
    """α = 0 reproduces the base and α = 1 lora-a: equal points, all on the frontier when
    one is (a tie beats neither); interpolations are no run's checkpoints."""
    from rich.console import Console

    from harness.runner import run_suite

    write_jsonl(tmp_path / "data" / "veloria.jsonl",
                [{"id": f"v{i}", "text": text} for i, text in enumerate(FACTS)])
    suite = small_suite(tmp_path, tuners=False, extra=INTERPOLATED)
    with open(os.devnull, "w") as quiet:
        summary = run_suite(suite, console=Console(file=quiet), show_progress=False)
    assert summary.failed == 0
    store = summary.store_path
    view = check_frontier(store)
    alphas = {f"lora-a~interp{alpha}": alpha for alpha in ("0", "0.5", "1")}
    for name in alphas:
        assert (view[name]["origin"], view[name]["tuner"], view[name]["method"]) == (
            "transformed", "interp", "interpolate")
    for name, same in (("lora-a~interp0", "base"), ("lora-a~interp1", "lora-a")):
        assert view[name]["learning"] == pytest.approx(view[same]["learning"], abs=1e-12)
        assert view[name]["forgetting"] == pytest.approx(view[same]["forgetting"], abs=1e-12)
        assert view[name]["on_frontier"] == view[same]["on_frontier"]
    assert {r["variant"] for r in rows(store, "SELECT * FROM training_curve")} == {
        "lora-a@step1", "lora-a@step2", "lora-a"}

    # the ready query: interpolations keeping 80% of lora-a's learning, no significant loss
    expected = sorted(name for name in alphas if view["lora-a"]["learning"] > 0
                      and view[name]["learning"] >= 0.8 * view["lora-a"]["learning"]
                      and view[name]["significant_losses"] == 0)
    _, found = query(store, doc_query("Interpolations that keep most of the target gain"))
    assert sorted(row[1] for row in found) == expected and "lora-a~interp1" in expected
    assert {row[2] for row in found} == {"lora-a"}

    md = report(store, "md", tmp_path / "interp.md")
    frontier = section(md, "Frontier")
    svg = (tmp_path / re.search(r"\]\(([^)]*frontier[^)]*)\)", frontier).group(1)).read_text()
    for name in alphas:
        assert f"<!-- {name} -->" in svg
        [line] = [r for r in table_rows(frontier) if r[0] == name]
        assert line[1:3] == ["transformed", "interp"]
