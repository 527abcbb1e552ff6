"""Each item's prompt and target are stored once (``item_texts``), however many cells
evaluate the item; ``samples`` (a view over ``sample_rows`` and ``item_texts``) reads as the
table of schema versions 1 to 7 did, and a version 7 store is migrated to it row for row."""

from __future__ import annotations

from dataclasses import replace

import duckdb
import pytest

from harness import Metric, Sample
from harness.store import SCHEMA_VERSION, Store, query
from harness.store.bulk import SAMPLE_COLUMNS, SAMPLE_ROW_COLUMNS

from .store_versions import SAMPLES_IN_ORDER, as_version_7
from .test_store_bulk import RowByRowStore, cell, varied_samples


@pytest.fixture()
def store(tmp_path) -> Store:
    store = Store(tmp_path / "s.duckdb")
    store.initialise()
    return store


def _rows(path, sql: str, params=()) -> list[tuple]:
    return query(path, sql, params)[1]


def _samples(path) -> list[tuple]:
    return _rows(path, "SELECT * FROM samples ORDER BY cell_key, item_index")


def _texts(path) -> int:
    return _rows(path, "SELECT count(*) FROM item_texts")[0][0]


# the texts of one evaluator's items: empty strings, NULLs, unicode, a prompt without a
# target and the other way round, pairs whose concatenations alone would be equal
ITEMS = [("Question: 2 + 2?\nAnswer:", " 4"), ("", ""), ("", None), (None, ""), (None, None),
         ("ünïcödé ✓ 漢字 🙂\x00", "עברית"), ("a:b", "c"), ("a", "b:c"), ("a", ":b:c"),
         ("1:a", None), ("1:", "a"), ("-", None), (None, "-"), ("x" * 100_000, "y"),
         ("same prompt", "target one"), ("same prompt", "target two"),
         ("prompt one", "same target"), ("prompt two", "same target")]


def _item_samples(outputs: str) -> list[Sample]:
    return [Sample(i, item_id=f"i{i}", prompt=p, target=t, output=f"{outputs}{i}",
                   score=float(i % 2), logprobs=[-1.0, -0.5], extra={"k": i})
            for i, (p, t) in enumerate(ITEMS)]


def test_the_same_text_written_by_three_cells_is_stored_once(store):
    for key in ("base", "lora-a", "lora-b"):
        store.write_cell(cell(key), [Metric("acc", 0.5, primary=True)], _item_samples(key))
    distinct = len({(p, t) for p, t in ITEMS if (p, t) != (None, None)})
    assert _texts(store.path) == distinct
    assert _rows(store.path, "SELECT count(*), count(text_key), count(DISTINCT text_key) "
                             "FROM sample_rows") == [(3 * len(ITEMS), 3 * distinct, distinct)]
    # every (prompt, target) pair is its own text, NULL told apart from ''
    assert sorted(_rows(store.path, "SELECT prompt, target FROM item_texts"),
                  key=repr) == sorted({(p, t) for p, t in ITEMS if (p, t) != (None, None)},
                                      key=repr)


def test_samples_reads_exactly_what_was_written(store):
    for key in ("base", "lora"):
        store.write_cell(cell(key), [], _item_samples(key))
    want = [(key, i, f"i{i}", p, t, f"{key}{i}", float(i % 2), [-1.0, -0.5], f'{{"k":{i}}}',
             None, None, None) for key in ("base", "lora") for i, (p, t) in enumerate(ITEMS)]
    assert _samples(store.path) == want
    columns, _ = query(store.path, "SELECT * FROM samples LIMIT 0")
    assert columns == list(SAMPLE_COLUMNS)


def test_a_distinct_prompt_or_target_is_a_distinct_text(store):
    store.write_cell(cell("c1"), [], [Sample(0, prompt="p", target="t"),
                                      Sample(1, prompt="p", target="u"),
                                      Sample(2, prompt="q", target="t"),
                                      Sample(3, prompt="p", target="t"),
                                      Sample(4, prompt="pt", target=""),
                                      Sample(5, prompt="p", target="t ")])
    assert _texts(store.path) == 5
    assert _rows(store.path, "SELECT item_index, prompt, target FROM samples "
                             "ORDER BY item_index") == [
        (0, "p", "t"), (1, "p", "u"), (2, "q", "t"), (3, "p", "t"), (4, "pt", ""),
        (5, "p", "t ")]


# texts that differ only in their decontamination query, or whose parts would run together
# without the lengths that mark where each ends
QUERIED = [("p", "t", None), ("p", "t", "q"), ("p", "t", "q2"), ("p", "t", ""),
           ("p", None, "q"), (None, "t", "q"), (None, None, "q"), ("p", "t:q", None),
           ("p", "t", ":q"), ("p", "t#", "q"), ("p", "t", "q ✓"), ("1:p", "t", "q")]


def test_a_decontamination_query_is_part_of_the_text_and_stored_once(store):
    """Each (prompt, target, query) is its own text; three cells evaluating the same
    items add no text; ``samples`` gives each row its query back."""
    for key in ("base", "lora-a", "lora-b"):
        store.write_cell(cell(key), [], [Sample(i, prompt=p, target=t, query=q, output=key)
                                         for i, (p, t, q) in enumerate(QUERIED)])
    assert _texts(store.path) == len(QUERIED)
    assert _rows(store.path, "SELECT count(DISTINCT text_key) FROM sample_rows") == [
        (len(QUERIED),)]
    for key in ("base", "lora-b"):
        assert _rows(store.path, "SELECT prompt, target, query, output FROM samples "
                                 "WHERE cell_key = ? ORDER BY item_index", [key]) == [
            (p, t, q, key) for p, t, q in QUERIED]


def test_a_text_without_a_query_keeps_the_key_schema_8_gave_it(store):
    from harness.store.schema import TEXT_KEY, TEXT_KEY_WITHOUT_QUERY

    con = duckdb.connect()
    texts = [(p, t) for p, t in ITEMS if len(p or "") < 1000]
    keys = [con.execute(f"SELECT {expr} FROM (SELECT ?::VARCHAR AS prompt, ?::VARCHAR AS target, "
                        f"NULL::VARCHAR AS query)", [p, t]).fetchone()[0]
            for p, t in texts for expr in (TEXT_KEY, TEXT_KEY_WITHOUT_QUERY)]
    assert keys[0::2] == keys[1::2]
    assert len({k for k in keys if k is not None}) == len(texts) - 1  # (None, None) has none


def test_rewriting_a_cell_replaces_its_rows_and_keeps_one_copy_of_each_text(store):
    store.write_cell(cell("c1"), [], _item_samples("first"))
    store.write_cell(cell("c2"), [], _item_samples("other"))
    store.write_cell(cell("c1"), [], [Sample(0, prompt="new prompt", target="t", output="o"),
                                      *_item_samples("second")[1:3]])
    assert _rows(store.path, "SELECT cell_key, count(*) FROM sample_rows GROUP BY ALL "
                             "ORDER BY ALL") == [("c1", 3), ("c2", len(ITEMS))]
    assert _rows(store.path, "SELECT item_index, prompt, target, output FROM samples "
                             "WHERE cell_key = 'c1' ORDER BY item_index") == [
        (0, "new prompt", "t", "o"), (1, "", "", "second1"), (2, "", None, "second2")]
    # texts are only added: the first attempt's stay, each once
    assert _rows(store.path, "SELECT count(*) = count(DISTINCT text_key) FROM item_texts") == [
        (True,)]
    assert _texts(store.path) == len({(p, t) for p, t in ITEMS if (p, t) != (None, None)}) + 1


def test_a_failed_write_adds_no_text(store):
    store.write_cell(cell("c1"), [], [Sample(0, prompt="kept", target="t")])
    with pytest.raises(duckdb.ConversionException):  # an item index past INTEGER
        store.write_cell(cell("c1"), [], [Sample(0, prompt="never stored", target="t"),
                                          Sample(2**40, prompt="nor this")])
    assert _rows(store.path, "SELECT prompt FROM item_texts") == [("kept",)]
    assert _rows(store.path, "SELECT cell_key, prompt FROM samples") == [("c1", "kept")]


def test_values_arrow_refuses_get_the_same_keys_through_duckdbs_conversion(store, monkeypatch):
    """An int item id sends a cell's samples through DuckDB's row-by-row conversion; its
    texts have the keys the Arrow path gives them, so they are not stored twice."""
    import harness.store.bulk as module

    fallbacks, row_by_row = [], module._insert_row_by_row
    monkeypatch.setattr(module, "_insert_row_by_row", lambda con, table, *rest: fallbacks.append(
        table) or row_by_row(con, table, *rest))
    store.write_cell(cell("c1"), [], [Sample(0, item_id="a", prompt="p", target="t"),
                                      Sample(1, item_id="b", prompt="", target=None)])
    store.write_cell(cell("c2"), [], [Sample(0, item_id=7, prompt="p", target="t"),
                                      Sample(1, item_id=8, prompt="", target=None),
                                      Sample(2, item_id=9, prompt=None, target=None)])
    assert _texts(store.path) == 2
    assert _rows(store.path, "SELECT cell_key, item_id, prompt, target FROM samples "
                             "ORDER BY ALL") == [
        ("c1", "a", "p", "t"), ("c1", "b", "", None), ("c2", "7", "p", "t"),
        ("c2", "8", "", None), ("c2", "9", None, None)]
    assert fallbacks == ["harness_bulk_samples"]  # c2's, not c1's


def test_the_write_path_and_the_views_agree_with_the_catalogue(store):
    """The columns write_cell sends and inserts are those of the view and of sample_rows."""
    def catalogue(table):
        return [c for (c,) in _rows(store.path, "SELECT column_name FROM information_schema."
                                    "columns WHERE table_name = ? ORDER BY ordinal_position",
                                    [table])]

    assert catalogue("samples") == list(SAMPLE_COLUMNS)
    assert catalogue("sample_rows") == list(SAMPLE_ROW_COLUMNS)
    assert catalogue("item_texts") == ["text_key", "prompt", "target", "query"]
    assert _rows(store.path, "SELECT table_name, table_type FROM information_schema.tables "
                             "WHERE table_name IN ('samples', 'sample_rows', 'item_texts') "
                             "ORDER BY 1") == [("item_texts", "BASE TABLE"),
                                               ("sample_rows", "BASE TABLE"),
                                               ("samples", "VIEW")]


def test_a_version_7_store_is_migrated_row_for_row(tmp_path):
    """A store written at version 7 (samples a table, its rows written one by one as that
    harness did) reads the same samples, value for value and in the same order, once a
    newer harness has opened it; its texts are stored once, with the keys a write gives."""
    old = RowByRowStore(tmp_path / "s.duckdb")
    old.initialise()
    samples = varied_samples(2000, seed=7)
    for key in ("base", "lora-a", "lora-b"):
        old.write_cell(cell(key), [Metric("acc", 0.5, primary=True)], samples)
    old.write_cell(cell("texts"), [], _item_samples("t"))
    as_version_7(old.path)
    con = duckdb.connect(str(old.path), read_only=True)
    # a version 7 row had no query
    before = [repr((*r, None))
              for r in con.execute("SELECT * FROM samples ORDER BY rowid").fetchall()]
    pairs = con.execute("SELECT count(DISTINCT (prompt, target)) FILTER ("
                        "WHERE prompt IS NOT NULL OR target IS NOT NULL) FROM samples").fetchone()
    con.close()
    assert len(before) == 3 * 2000 + len(ITEMS)

    store = Store(old.path)
    store.ensure_current()
    con = duckdb.connect(str(old.path), read_only=True)
    try:
        after = [repr(r) for r in con.execute(SAMPLES_IN_ORDER).fetchall()]
        view = [repr(r) for r in con.execute("SELECT * FROM samples").fetchall()]
        kinds = dict(con.execute("SELECT table_name, table_type FROM information_schema.tables "
                                 "WHERE table_name LIKE 'sample%'").fetchall())
        version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        texts = con.execute("SELECT count(*), count(DISTINCT text_key) FROM item_texts").fetchone()
    finally:
        con.close()
    assert after == before
    assert sorted(view) == sorted(before)
    assert kinds == {"samples": "VIEW", "sample_rows": "BASE TABLE"}
    assert version == (str(SCHEMA_VERSION),)
    assert texts == (pairs[0], pairs[0])
    # the migration's keys are the writes' keys: the same texts written again add none
    # (version 7 had no query: the same samples without one)
    store.write_cell(cell("again"), [], [replace(s, query=None) for s in samples])
    store.write_cell(cell("texts again"), [], _item_samples("u"))
    assert _texts(store.path) == pairs[0]
    # and the views read the migrated rows
    assert _rows(store.path, "SELECT count(*) FROM samples WHERE cell_key = 'lora-a'") == [
        (2000,)]


def test_a_version_8_store_gets_the_query_column_and_keeps_its_texts_keys(tmp_path):
    """A version 8 store kept each item's decontamination query in every cell's ``extra``.
    Opened by a newer harness, it keeps its rows and texts as they were, reads the query
    through ``item_text`` as before, and a cell written afterwards with the same prompts
    and targets and no query adds no text."""
    from harness import item_text

    from .store_versions import as_version_8

    store = Store(tmp_path / "s.duckdb")
    store.initialise()
    store.write_cell(cell("base"), [], [Sample(i, prompt=p, target=t, query=f"q{i}")
                                        for i, (p, t) in enumerate(ITEMS)])
    store.write_cell(cell("plain"), [], _item_samples("plain"))
    as_version_8(store.path)
    assert _rows(store.path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("8",)]
    before = _rows(store.path, "SELECT * FROM samples ORDER BY cell_key, item_index")
    texts = _texts(store.path)

    store.ensure_current()
    assert _rows(store.path, "SELECT value FROM meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)]
    after = _rows(store.path, "SELECT * FROM samples ORDER BY cell_key, item_index")
    assert after == [(*row, None) for row in before]  # a migrated text has no query column
    import json

    assert [item_text(r[3], r[4], json.loads(r[8]), r[11]) for r in after[:3]] == [
        "q0", "q1", "q2"]  # from extra, as version 8 kept it
    store.write_cell(cell("lora"), [], _item_samples("lora"))
    assert _texts(store.path) == texts
