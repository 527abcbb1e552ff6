"""The store's schema, written in one place: tables and migrations (the views are in
:mod:`harness.store.views`).

:mod:`harness.store.rows` holds one dataclass per table a run writes, with the same
columns in the same order; a test checks that they agree.
"""

from __future__ import annotations

SCHEMA_VERSION = 9

_PROMPT = "CASE WHEN prompt IS NULL THEN '-' ELSE strlen(prompt)::VARCHAR || ':' || prompt END"

#: The key schema 8 gave a text: the MD5 of its prompt and target, each NULL told apart from
#: an empty string and the prompt's end marked by its length (``12:<prompt>`` or ``-``,
#: then ``:<target>`` or ``-``); NULL when both are NULL. Migration 7 computes it over the
#: old ``samples`` table, which had no query.
TEXT_KEY_WITHOUT_QUERY = (f"CASE WHEN prompt IS NULL AND target IS NULL THEN NULL ELSE md5("
                          f"{_PROMPT} || CASE WHEN target IS NULL THEN '-' ELSE ':' || target END"
                          f") END")

#: The key of an item's text in ``item_texts`` (32 hex digits): a text without a query keeps
#: schema 8's key (above); one with a query hashes ``<prompt part>#<target part>:<query>``,
#: the target's end marked by its length too (``-`` or ``5:<target>``), so that no two
#: different texts encode alike. One SQL expression over columns named ``prompt``,
#: ``target`` and ``query``: DuckDB computes it over a cell's samples as they are written
#: (``Store.write_cell``, in one statement over their Arrow table).
TEXT_KEY = (f"CASE WHEN query IS NULL THEN {TEXT_KEY_WITHOUT_QUERY} ELSE md5({_PROMPT} || '#'"
            f" || CASE WHEN target IS NULL THEN '-' ELSE strlen(target)::VARCHAR || ':' || target"
            f" END || ':' || query) END")

#: SQL that brings a store from version N to N + 1, applied in order inside one transaction
#: when a newer harness opens an older store. New tables need none: ``TABLES`` creates
#: what is missing (version 2 added ``alerts``, version 3 ``paired_tests``, version 4
#: ``contamination``, version 8 ``item_texts`` and ``sample_rows``, before the migrations
#: run); only changes to existing tables are listed.
MIGRATIONS: dict[int, str] = {
    1: "ALTER TABLE cells ADD COLUMN IF NOT EXISTS info JSON",  # version 2: cells.info
    3: "ALTER TABLE samples ADD COLUMN IF NOT EXISTS min_k DOUBLE; "  # version 4: membership
       "ALTER TABLE samples ADD COLUMN IF NOT EXISTS min_k_plus DOUBLE",
    4: "ALTER TABLE cells ADD COLUMN IF NOT EXISTS backend_path VARCHAR",  # version 5
    # version 6: the lineage of variants; paired tests keep their sufficient statistics,
    # and those made by the earlier tests (exact McNemar, bootstrap) are made again
    5: "ALTER TABLE variants ADD COLUMN IF NOT EXISTS parent_key VARCHAR; "
       "ALTER TABLE variants ADD COLUMN IF NOT EXISTS root_key VARCHAR; "
       "ALTER TABLE variants ADD COLUMN IF NOT EXISTS tuner VARCHAR; "
       "ALTER TABLE variants ADD COLUMN IF NOT EXISTS recipe_key VARCHAR; "
       "ALTER TABLE variants ADD COLUMN IF NOT EXISTS recipe JSON; "
       "ALTER TABLE variants ADD COLUMN IF NOT EXISTS seed INTEGER; "
       "ALTER TABLE variants ADD COLUMN IF NOT EXISTS sweep JSON; "
       "ALTER TABLE paired_tests ADD COLUMN IF NOT EXISTS sd DOUBLE; "
       "ALTER TABLE paired_tests ADD COLUMN IF NOT EXISTS lost INTEGER; "
       "ALTER TABLE paired_tests ADD COLUMN IF NOT EXISTS gained INTEGER; "
       "DELETE FROM paired_tests WHERE test IN ('mcnemar', 'bootstrap')",
    # version 7: checkpoints and transformed variants
    6: "ALTER TABLE variants ADD COLUMN IF NOT EXISTS origin VARCHAR; "
       "ALTER TABLE variants ADD COLUMN IF NOT EXISTS step INTEGER; "
       "ALTER TABLE variants ADD COLUMN IF NOT EXISTS sources JSON; "
       "UPDATE variants SET origin = 'tuned' WHERE origin IS NULL",
    # version 8: each item's prompt and target once, in item_texts; the samples table's other
    # columns, in its order, in sample_rows; ``samples`` is then a view (harness/store/views.py,
    # made after the migrations) that joins them back
    7: f"INSERT INTO item_texts (text_key, prompt, target) "
       f"SELECT text_key, any_value(prompt), any_value(target) FROM ("
       f"SELECT {TEXT_KEY_WITHOUT_QUERY} AS text_key, prompt, target FROM samples) "
       f"WHERE text_key IS NOT NULL GROUP BY text_key; "
       f"INSERT INTO sample_rows (cell_key, item_index, item_id, text_key, output, score, "
       f"logprobs, extra, min_k, min_k_plus) "
       f"SELECT cell_key, item_index, item_id, {TEXT_KEY_WITHOUT_QUERY}, output, score, "
       f"logprobs, extra, min_k, min_k_plus FROM samples; "
       f"DROP TABLE samples",
    # version 9: an item's decontamination query (Sample.query) is part of its text, stored
    # once in item_texts instead of in every cell's extra; older rows keep it in extra
    8: "ALTER TABLE item_texts ADD COLUMN IF NOT EXISTS query VARCHAR",
}

TABLES = """
CREATE TABLE IF NOT EXISTS meta (
    key VARCHAR PRIMARY KEY,
    value VARCHAR
);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    suite VARCHAR,
    suite_path VARCHAR,
    harness_version VARCHAR,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    status VARCHAR,
    cells_planned INTEGER,
    cells_cached INTEGER,
    cells_done INTEGER,
    cells_failed INTEGER,
    seconds DOUBLE
);
CREATE TABLE IF NOT EXISTS models (
    model_key VARCHAR,
    name VARCHAR,
    source VARCHAR,
    path VARCHAR,
    first_seen TIMESTAMP,
    PRIMARY KEY (model_key, name)
);
CREATE TABLE IF NOT EXISTS variants (
    variant_key VARCHAR PRIMARY KEY,
    suite VARCHAR,
    model_name VARCHAR,
    model_key VARCHAR,
    name VARCHAR,
    method VARCHAR,
    kind VARCHAR,
    config JSON,
    data_path VARCHAR,
    data_hash VARCHAR,
    path VARCHAR,
    status VARCHAR,
    error VARCHAR,
    steps INTEGER,
    loss_curve DOUBLE[],
    final_loss DOUBLE,
    seconds DOUBLE,
    train_tokens BIGINT,
    tokens_per_second DOUBLE,
    peak_memory_mb DOUBLE,
    trainable_params BIGINT,
    total_params BIGINT,
    run_id VARCHAR,
    created_at TIMESTAMP,
    -- the lineage: the variant it was trained on (the base's key for a child of the base),
    -- the base at the root, the tuner entry, what seed replicates share, the seed, and the
    -- swept options' values (JSON: sweep->>'r')
    parent_key VARCHAR,
    root_key VARCHAR,
    tuner VARCHAR,
    recipe_key VARCHAR,
    recipe JSON,
    seed INTEGER,
    sweep JSON,
    -- how it was made: 'tuned' (a tuner's final state), 'checkpoint' (its state at
    -- `step`) or 'transformed' (a transform of the variants in `sources`, JSON keys);
    -- `tuner` is then the suite entry that made it, tuner or transform
    origin VARCHAR,
    step INTEGER,
    sources JSON
);
CREATE TABLE IF NOT EXISTS cells (
    cell_key VARCHAR PRIMARY KEY,
    run_id VARCHAR,
    suite VARCHAR,
    model_name VARCHAR,
    model_key VARCHAR,
    variant_name VARCHAR,
    variant_key VARCHAR,
    evaluator VARCHAR,
    evaluator_kind VARCHAR,
    evaluator_key VARCHAR,
    role VARCHAR,
    backend VARCHAR,
    status VARCHAR,
    error VARCHAR,
    traceback VARCHAR,
    seconds DOUBLE,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    info JSON,
    backend_path VARCHAR
);
-- metrics and sample_rows carry no primary key: a cell's rows are replaced by a
-- delete and an insert inside one transaction, which DuckDB's index checks
-- would reject for the same key.
CREATE TABLE IF NOT EXISTS metrics (
    cell_key VARCHAR,
    metric VARCHAR,
    value DOUBLE,
    n INTEGER,
    stderr DOUBLE,
    higher_is_better BOOLEAN,
    is_primary BOOLEAN
);
-- one row per evaluated item of a cell; the item's prompt and target are stored once per
-- distinct text in item_texts (text_key: TEXT_KEY above; NULL when all are NULL), and the
-- view ``samples`` (harness/store/views.py) joins them back
CREATE TABLE IF NOT EXISTS sample_rows (
    cell_key VARCHAR,
    item_index INTEGER,
    item_id VARCHAR,
    text_key VARCHAR,
    output VARCHAR,
    score DOUBLE,
    logprobs DOUBLE[],
    extra JSON,
    min_k DOUBLE,
    min_k_plus DOUBLE
);
-- each (prompt, target, query) of the samples once. Only added to, by inserts that skip keys
-- already present: a rewritten cell's texts stay, whether or not another cell still refers
-- to them. No primary key: keeping its index made writes slower and the file larger
-- (harness/store/bulk.py, insert_samples); the store's one writer keeps keys unique
CREATE TABLE IF NOT EXISTS item_texts (
    text_key VARCHAR,
    prompt VARCHAR,
    target VARCHAR,
    query VARCHAR
);
-- a variant's cell against its base's cell on the same items (harness/analysis/stats.py)
CREATE TABLE IF NOT EXISTS paired_tests (
    variant_cell_key VARCHAR,
    base_cell_key VARCHAR,
    test VARCHAR,
    n INTEGER,
    delta DOUBLE,
    ci_low DOUBLE,
    ci_high DOUBLE,
    p_value DOUBLE,
    sd DOUBLE,          -- of the item differences
    lost INTEGER,       -- right/wrong items: right before, wrong after
    gained INTEGER      -- wrong before, right after
);
-- two recipes (seed replicates pooled) on the same base and evaluator: does their
-- difference exceed seed-to-seed variation? Welch's t-test (harness/analysis/gate.py)
CREATE TABLE IF NOT EXISTS recipe_tests (
    suite VARCHAR,
    model VARCHAR,
    evaluator VARCHAR,
    metric VARCHAR,
    recipe_a VARCHAR,
    recipe_b VARCHAR,
    n_a INTEGER,
    n_b INTEGER,
    mean_a DOUBLE,
    mean_b DOUBLE,
    sd_a DOUBLE,
    sd_b DOUBLE,
    diff DOUBLE,
    t DOUBLE,
    df DOUBLE,
    p_value DOUBLE
);
-- the gate's decision per variant and general or safety evaluator (harness/analysis/gate.py)
CREATE TABLE IF NOT EXISTS gate_decisions (
    suite VARCHAR,
    model VARCHAR,
    variant VARCHAR,
    variant_key VARCHAR,
    evaluator VARCHAR,
    metric VARCHAR,
    unit VARCHAR,
    test VARCHAR,
    n INTEGER,
    loss DOUBLE,
    ci_low DOUBLE,
    ci_high DOUBLE,
    p_value DOUBLE,
    p_holm DOUBLE,
    max_loss DOUBLE,
    alpha DOUBLE,
    mde DOUBLE,
    decision VARCHAR,
    reason VARCHAR
);
-- evaluation items found in a variant's tuning data (exact, ngram-<n>) or suddenly
-- likelier under the variant than under its base (min-k, min-k++); harness/analysis/contamination.py
CREATE TABLE IF NOT EXISTS contamination (
    analysis_key VARCHAR,
    suite VARCHAR,
    model VARCHAR,
    variant VARCHAR,
    variant_key VARCHAR,
    evaluator VARCHAR,
    evaluator_key VARCHAR,
    item_index INTEGER,
    item_id VARCHAR,
    dataset VARCHAR,
    method VARCHAR,
    score DOUBLE,
    flagged BOOLEAN,
    detail JSON
);
-- thresholds a cell's metrics crossed (drift monitors); replaced with the cell
CREATE TABLE IF NOT EXISTS alerts (
    cell_key VARCHAR,
    metric VARCHAR,
    value DOUBLE,
    threshold DOUBLE,
    message VARCHAR
);
"""
