"""The store's bulk writes (Arrow tables inserted in one statement) store exactly what the
row-by-row ``executemany`` writes stored: every column of every row, NULLs, NaN, unicode,
long texts, log-probabilities and ``extra`` dicts, in the same order, one transaction per
write call."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pytest

from harness import Alert, Metric, Sample
from harness.store import (
    CellRow,
    ContaminationRow,
    GateRow,
    PairedTestRow,
    RecipeTestRow,
    Store,
    query,
)
from harness.store.rows import TABLE_OF, insert_sql, values
from harness.store.bulk import SAMPLE_COLUMNS
from harness.store.bulk import _insert_row_by_row as ROW_BY_ROW

from .store_versions import SAMPLES_IN_ORDER, samples_as_table


# -- the reference: the row-by-row writes the store made before its bulk path -------------


class RowByRowStore(Store):
    """The store as it wrote before: ``executemany``, one row at a time, and its samples
    into a table of their own (as schema versions 1 to 7 stored them, with schema 9's
    ``query`` as its last column)."""

    def initialise(self) -> None:
        super().initialise()
        con = duckdb.connect(str(self.path))
        try:
            samples_as_table(con, query=True)
        finally:
            con.close()

    def write_cell(self, cell, metrics=(), samples=(), alerts=()) -> None:
        key = cell.cell_key
        with self._write() as con:
            for table in ("metrics", "samples", "alerts"):
                con.execute(f"DELETE FROM {table} WHERE cell_key = ?", [key])
            con.execute(insert_sql(CellRow, "INSERT OR REPLACE"), values(cell))
            if metrics:
                con.executemany(
                    "INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [[key, m.name, float(m.value), m.n, m.stderr, m.higher_is_better, m.primary]
                     for m in metrics])
            if samples:
                con.executemany(
                    "INSERT INTO samples (cell_key, item_index, item_id, prompt, target, "
                    "output, score, logprobs, extra, min_k, min_k_plus, query) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [[key, s.index, s.item_id, s.prompt, s.target, s.output, s.score,
                      s.logprobs, json.dumps(s.extra or {}, default=str), s.min_k, s.min_k_plus,
                      s.query] for s in samples])
            if alerts:
                con.executemany("INSERT INTO alerts VALUES (?, ?, ?, ?, ?)",
                                [[key, a.metric, float(a.value), a.threshold, a.message]
                                 for a in alerts])

    def write_paired_tests(self, rows) -> None:
        if rows:
            with self._write() as con:
                con.executemany(insert_sql(PairedTestRow), [values(r) for r in rows])

    def write_contamination(self, replaced, rows) -> None:
        with self._write() as con:
            for variant_key, evaluator_key, patterns in replaced:
                con.execute(
                    "DELETE FROM contamination WHERE variant_key = ? AND evaluator_key = ? "
                    "AND EXISTS (SELECT 1 FROM unnest(?) AS p(pattern) "
                    "WHERE method LIKE pattern)",
                    [variant_key, evaluator_key, list(patterns)])
            if rows:
                con.executemany(insert_sql(ContaminationRow), [values(r) for r in rows])

    def replace_suite_rows(self, row_type, suite, rows) -> None:
        with self._write() as con:
            con.execute(f"DELETE FROM {TABLE_OF[row_type]} WHERE suite = ?", [suite])
            if rows:
                con.executemany(insert_sql(row_type), [values(r) for r in rows])


# -- what is stored, exactly ------------------------------------------------------------


TABLES = ("cells", "metrics", "samples", "alerts", "paired_tests", "contamination",
          "recipe_tests", "gate_decisions")


def dump(store: Store, table: str) -> list[str]:
    """Every row in insertion order, as the repr of what DuckDB returns: a changed value,
    a float that became an int, True that became 1, or NaN that became NULL all differ.
    The ``samples`` view has no order of its own: its rows in ``sample_rows``' order, which
    must be the view's rows."""
    con = duckdb.connect(str(store.path), read_only=True)
    try:
        kind = con.execute("SELECT table_type FROM information_schema.tables "
                           "WHERE table_name = ?", [table]).fetchone()[0]
        if kind == "VIEW":
            assert table == "samples"
            rows = [repr(_parsed_extra(row)) for row in con.execute(SAMPLES_IN_ORDER).fetchall()]
            view = [repr(_parsed_extra(row))
                    for row in con.execute(f"SELECT * FROM {table}").fetchall()]
            assert sorted(view) == sorted(rows), table
            return rows
        rows = con.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
        return [repr(_parsed_extra(row) if table == "samples" else row) for row in rows]
    finally:
        con.close()


def _parsed_extra(row: tuple) -> tuple:
    """A samples row with its ``extra`` as the value its JSON text says: the bulk path
    writes it compact (pydantic's serializer), the row-by-row one as ``json.dumps`` did."""
    extra = SAMPLE_COLUMNS.index("extra")
    return (*row[:extra], None if row[extra] is None else json.loads(row[extra]),
            *row[extra + 1:])


def assert_same_stores(bulk: Store, reference: Store) -> None:
    for table in TABLES:
        got, want = dump(bulk, table), dump(reference, table)
        assert len(got) == len(want), table
        for i, (g, w) in enumerate(zip(got, want)):
            assert g == w, f"{table} row {i}"


@pytest.fixture()
def stores(tmp_path, monkeypatch) -> tuple[Store, Store]:
    """A store and a row-by-row one. The store's own row-by-row fallback fails the test
    unless the test allows it: what these tests compare must go through Arrow."""
    import harness.store.bulk as module

    def refuse(con, table, *args):
        raise AssertionError(f"{table}: the bulk path fell back to row-by-row writes")

    monkeypatch.setattr(module, "_insert_row_by_row", refuse)
    pair = Store(tmp_path / "bulk.duckdb"), RowByRowStore(tmp_path / "reference.duckdb")
    for store in pair:
        store.initialise()
    return pair


# -- rows with everything that can go wrong in transit ------------------------------------

TEXTS = ["", " ", "plain", "ünïcödé ✓ 漢字 עברית 🙂", "tab\tnew\nline\r\n", "quote ' \" \\ ",
         "nul \x00 inside", "e\u0301 combining", "x" * 100_000, "\u200b zero width", "NULL", "{}"]


def _text(rng: random.Random) -> str | None:
    return None if rng.random() < 0.15 else rng.choice(TEXTS) + str(rng.random())


def _float(rng: random.Random) -> float | None:
    return rng.choice([None, 0.0, -0.0, 1.0, -1e-300, 1e300, 5e-324, math.pi, math.nan, math.inf,
                       -math.inf, rng.gauss(0, 1), rng.random()])


def _logprobs(rng: random.Random) -> list[float] | None:
    kind = rng.randrange(6)
    if kind == 0:
        return None
    if kind == 1:
        return []
    if kind == 2:
        return [rng.gauss(-5, 3) for _ in range(rng.randint(1000, 3000))]  # per-token
    if kind == 3:
        return [-math.inf, math.nan, 0.0, -1e-310]
    return [-rng.random() * 10 for _ in range(4)]


def _extra(rng: random.Random, i: int) -> dict | None:
    return rng.choice([
        None, {},
        {"task": "mmlu", "doc_id": i, "acc": 1.0, "acc_norm": 0.0},
        {"nested": {"deeper": {"list": [1, 2.5, None, "ü", {"k": [True, False]}]}},
         "ключ": "значение", "emoji 🙂": ["a\nb", "\"quoted\""]},
        {"when": date(2026, 1, 2), "path": Path("/tmp/x"), "float": 1e-7, "big": 2**70},
        {"guard_output": "x" * 20_000, "categories": ["S1", "S10"], "verdict": None},
    ])


def varied_samples(n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    return [Sample(index=i if i % 97 else 2**31 - 1 - i, item_id=_text(rng), prompt=_text(rng),
                   target=_text(rng), output=_text(rng), score=_float(rng),
                   logprobs=_logprobs(rng), extra=_extra(rng, i), min_k=_float(rng),
                   min_k_plus=_float(rng), query=_text(rng) if i % 3 == 0 else None)
            for i in range(n)]


def cell(key: str, **fields) -> CellRow:
    return CellRow(cell_key=key, run_id="r", suite="s", model_name="m", model_key="mk",
                   variant_name="base", variant_key="vk", evaluator="e",
                   evaluator_kind="benchmark", evaluator_key="ek", role="general", backend="hf",
                   status="done", seconds=1.5, info=json.dumps({"judge": "ü"}), **fields)


METRICS = [Metric("acc", 0.5, n=3000, stderr=0.01, higher_is_better=True, primary=True),
           Metric("ppl ü", 12, n=None, stderr=None, higher_is_better=False),
           Metric("nan", math.nan, n=0, stderr=math.inf),
           Metric("int-value", 3, n=2**31 - 1, stderr=0)]
ALERTS = [Alert("kl_mean", 0.808, 0.25, "token KL 0.808 > 0.25 🙂"),
          Alert("psi", math.nan, 1, "")]


def findings(n: int, seed: int = 0, variant_keys=("vk-a", "vk-b")) -> list[ContaminationRow]:
    rng = random.Random(seed)
    methods = ("exact", "ngram-13", "min-k", "min-k++")
    return [ContaminationRow(
        f"ak{i % 5}", "s", "m ü", "lora", variant_keys[i // 4 % len(variant_keys)], "e", "ek",
        i // 4, _text(rng), "data/sft.jsonl + data/ü.jsonl", methods[i % 4], _float(rng),
        rng.random() < 0.3, json.dumps({"base": _float(rng), "variant": _text(rng)}))
        for i in range(n)]


# -- the tests ----------------------------------------------------------------------------


def test_a_cell_of_thousands_of_varied_samples_is_stored_exactly_as_row_by_row(stores):
    samples = varied_samples(3000)
    for store in stores:
        store.write_cell(cell("c1"), METRICS, samples, ALERTS)
    assert_same_stores(*stores)
    bulk = stores[0]
    _, rows = query(bulk.path, "SELECT count(*), count(logprobs), count(item_id) FROM samples")
    assert rows[0][0] == 3000 and 0 < rows[0][1] < 3000 and 0 < rows[0][2] < 3000
    _, types = query(bulk.path, "SELECT DISTINCT typeof(logprobs), typeof(extra), "
                                "typeof(item_id), typeof(item_index) FROM samples")
    assert types == [("DOUBLE[]", "JSON", "VARCHAR", "INTEGER")]


def test_rewriting_a_cell_replaces_its_rows(stores):
    for store in stores:
        store.write_cell(cell("c1"), METRICS, varied_samples(500, seed=1), ALERTS)
        store.write_cell(cell("c2"), METRICS[:1], varied_samples(20, seed=2), [])
        store.write_cell(cell("c1", error="second"), METRICS[1:2], varied_samples(30, seed=3))
    assert_same_stores(*stores)
    _, counts = query(stores[0].path,
                      "SELECT cell_key, count(*) FROM samples GROUP BY ALL ORDER BY ALL")
    assert counts == [("c1", 30), ("c2", 20)]
    assert query(stores[0].path, "SELECT count(*) FROM alerts")[1] == [(0,)]


def test_a_write_that_fails_leaves_the_earlier_attempt_whole(stores):
    """The DELETE of the earlier attempt and the insert are one transaction: a value the
    column cannot hold (an item index past INTEGER) undoes the whole write."""
    bulk = stores[0]
    bulk.write_cell(cell("c1"), METRICS, varied_samples(50), ALERTS)
    before = {t: dump(bulk, t) for t in TABLES}
    too_big = varied_samples(50, seed=9) + [Sample(2**40, item_id="too big")]
    with pytest.raises(duckdb.ConversionException):
        bulk.write_cell(cell("c1", error="never stored"), METRICS, too_big, ALERTS)
    with pytest.raises(ValueError):
        bulk.write_cell(cell("c1"), [Metric("x", "not a number")], varied_samples(5))
    bulk.write_contamination([], findings(20))
    before = {t: dump(bulk, t) for t in TABLES}
    with pytest.raises(duckdb.ConversionException):
        bulk.write_contamination([("vk-a", "ek", ["%"])],
                                 [*findings(10), replace(findings(1)[0], item_index=2**40)])
    assert {t: dump(bulk, t) for t in TABLES} == before


def test_empty_writes_still_work(stores):
    for store in stores:
        store.write_cell(cell("c1"), METRICS, varied_samples(10), ALERTS)
        store.write_cell(cell("c1"), [], [], [])  # replaces with nothing
        store.write_cell(cell("c2"))
        store.write_contamination([], [])
        store.write_contamination([("vk-a", "ek", ["exact"])], findings(8))
        store.write_contamination([("vk-a", "ek", ["exact", "ngram-%"])], [])
        store.write_paired_tests([])
        store.replace_suite_rows(GateRow, "s", [])
        store.replace_suite_rows(RecipeTestRow, "s", [])
    assert_same_stores(*stores)
    _, counts = query(stores[0].path, "SELECT (SELECT count(*) FROM cells), (SELECT count(*) "
                                      "FROM samples), (SELECT count(*) FROM contamination)")
    assert counts == [(2, 0, 6)]  # vk-a's exact and ngram-13 findings are gone


def test_contamination_findings_are_replaced_by_like_patterns_as_before(stores):
    replaced = [("vk-a", "ek", ["exact", "ngram-%"]), ("vk-b", "ek", ["min-k%"]),
                ("vk-none", "ek", ["%"])]
    for store in stores:
        store.write_contamination([], findings(2000, seed=4))
        store.write_contamination(replaced, findings(800, seed=5, variant_keys=("vk-a",)))
    assert_same_stores(*stores)
    _, rows = query(stores[0].path, "SELECT variant_key, method, count(*) FROM contamination "
                                    "GROUP BY ALL ORDER BY ALL")
    assert rows == [("vk-a", "exact", 200), ("vk-a", "min-k", 450), ("vk-a", "min-k++", 450),
                    ("vk-a", "ngram-13", 200), ("vk-b", "exact", 250),
                    ("vk-b", "ngram-13", 250)]
    _, types = query(stores[0].path, "SELECT DISTINCT typeof(flagged), typeof(detail) "
                                     "FROM contamination")
    assert types == [("BOOLEAN", "JSON")]


def test_paired_tests_recipe_tests_and_gate_rows_are_stored_as_before(stores):
    paired = [PairedTestRow(f"v{i}", f"b{i}", "mcnemar-midp", 40, -0.05, -0.2, 0.1, 0.58,
                            None if i % 2 else 0.3, i, None) for i in range(300)]
    paired.append(PairedTestRow("v", "b", "paired-t", 30, math.nan, -math.inf, math.inf,
                                1.823e-13, 1e-300, None, None))
    recipes = [RecipeTestRow("s", "m", "e", "acc", f"r{i}", "r ü", 3, 3, 0.5, 0.6, 0.01, 0.02,
                             -0.1, -2.5, 3.9, 0.04) for i in range(50)]
    gates = [GateRow("s", "m", f"v{i}", "vk", None if i % 3 == 0 else "e", None, None, None, 0,
                     None, None, None, None, None, None, 0.05, None,
                     ("GO", "NO-GO", "INCONCLUSIVE")[i % 3], "reason ü\n" * (i % 4))
             for i in range(60)]
    for store in stores:
        store.write_paired_tests(paired)
        store.replace_suite_rows(RecipeTestRow, "s", recipes)
        store.replace_suite_rows(GateRow, "other", [replace(g, suite="other")
                                                    for g in gates[:5]])
        store.replace_suite_rows(GateRow, "s", gates)
        store.replace_suite_rows(GateRow, "s", gates[10:40])
    assert_same_stores(*stores)
    assert query(stores[0].path, "SELECT count(*) FROM gate_decisions")[1] == [(35,)]


def test_values_arrow_will_not_take_are_converted_by_duckdb_as_before(stores, monkeypatch):
    """An int item id, a numeric string as a score, a float count: the bulk path falls back
    to DuckDB's own conversion (an int id becomes '7', a count of 6.7 rounds to 7)."""
    import harness.store.bulk as module

    fallbacks = []
    monkeypatch.setattr(module, "_insert_row_by_row",
                        lambda con, table, *rest: fallbacks.append(table)
                        or ROW_BY_ROW(con, table, *rest))
    samples = [Sample(0, item_id=7, score="0.25"), Sample(1, item_id="x", score=1),
               Sample(2, item_id=None, score=True, logprobs=[1, 2])]
    metrics = [Metric("m", 1, n=2.6, higher_is_better=1)]
    ints_as_floats = [PairedTestRow("v", "b", "t", 6.7, 0.0, 0.0, 0.0, 1.0, None, 2.5, 3.0)]
    odd_finding = [ContaminationRow("a", "s", "m", "v", "vk", "e", "ek", 1.0, 5, "d", "exact",
                                    1, 1, "{}")]
    for store in stores:
        store.write_cell(cell("c1"), metrics, samples)
        store.write_paired_tests(ints_as_floats)
        store.write_contamination([], odd_finding)
    assert_same_stores(*stores)
    bulk = stores[0]
    _, rows = query(bulk.path, "SELECT item_id, score FROM samples ORDER BY item_index")
    assert rows == [("7", 0.25), ("x", 1.0), (None, 1.0)]
    assert query(bulk.path, "SELECT n, higher_is_better FROM metrics")[1] == [(3, True)]
    assert query(bulk.path, "SELECT n, lost, gained FROM paired_tests")[1] == [(7, 2, 3)]
    assert query(bulk.path, "SELECT item_index, item_id, flagged FROM contamination")[1] == [
        (1, "5", True)]
    # the paired test's floats in INTEGER columns went through Arrow, cast by DuckDB
    assert fallbacks == ["metrics", "harness_bulk_samples", "contamination"]


def test_numpy_numbers_are_stored_as_their_python_values(stores):
    """Row by row, DuckDB refused numpy scalars; the bulk path stores their values."""
    bulk, reference = stores
    samples = [Sample(int(i), item_id=str(i), score=np.float32(0.1) if i else np.float64(0.5),
                      logprobs=np.array([-1.5, -0.25], dtype=np.float32), min_k=np.float64(-2))
               for i in np.arange(3)]
    plain = [Sample(s.index, item_id=s.item_id, score=float(s.score),
                    logprobs=[float(x) for x in s.logprobs], min_k=float(s.min_k))
             for s in samples]
    bulk.write_cell(cell("c1"), [], samples)
    reference.write_cell(cell("c1"), [], plain)
    assert_same_stores(bulk, reference)


def test_extra_is_stored_as_compact_json_meaning_what_json_dumps_meant(tmp_path):
    """``extra`` goes through pydantic's serializer: the same JSON value as ``json.dumps(
    extra, default=str)`` for what JSON can say (NaN and infinities too), a value it cannot
    as its ``str``; only sets and tuples (lists) and bytes (text) differ, as documented."""
    store = Store(tmp_path / "s.duckdb")
    store.initialise()
    extras = [{"nan": math.nan, "inf": -math.inf, "big": 2**70, "small": 1e-7, "ü": "漢字 🙂",
               "nested": {"list": [1, 2.5, None, True]}, "when": date(2026, 1, 2),
               "path": Path("/tmp/x"), "np": np.float64(0.25), "npint": np.int64(3),
               "object": None},
              {"a set": {1}, "a tuple": (1, 2), "bytes": b"xy"}, {}]
    store.write_cell(cell("c"), [], [Sample(i, extra=e) for i, e in enumerate(extras)])
    stored = [row[0] for row in query(store.path, "SELECT extra FROM samples "
                                                  "ORDER BY item_index")[1]]
    assert ", " not in stored[0] and '": ' not in stored[0]  # compact
    first = json.loads(stored[0])
    assert math.isnan(first.pop("nan"))
    want = json.loads(json.dumps(extras[0], default=str))
    want.pop("nan")
    assert first == want
    assert json.loads(stored[1]) == {"a set": [1], "a tuple": [1, 2], "bytes": "xy"}
    assert stored[2] == "{}"
