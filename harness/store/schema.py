"""The store's schema, written in one place: tables, migrations and views.

:mod:`harness.store.rows` holds one dataclass per table a run writes, with the same
columns in the same order; a test checks that they agree.
"""

from __future__ import annotations

import re

SCHEMA_VERSION = 5

#: SQL that brings a store from version N to N + 1, applied in order inside one transaction
#: when a newer harness opens an older store. New tables need none: ``TABLES`` creates
#: what is missing (version 2 added ``alerts``, version 3 ``paired_tests``, version 4
#: ``contamination``); only changes to existing tables are listed.
MIGRATIONS: dict[int, str] = {
    1: "ALTER TABLE cells ADD COLUMN IF NOT EXISTS info JSON",  # version 2: cells.info
    3: "ALTER TABLE samples ADD COLUMN IF NOT EXISTS min_k DOUBLE; "  # version 4: membership
       "ALTER TABLE samples ADD COLUMN IF NOT EXISTS min_k_plus DOUBLE",
    4: "ALTER TABLE cells ADD COLUMN IF NOT EXISTS backend_path VARCHAR",  # version 5
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
    created_at TIMESTAMP
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
-- metrics and samples carry no primary key: a cell's rows are replaced by a
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
CREATE TABLE IF NOT EXISTS samples (
    cell_key VARCHAR,
    item_index INTEGER,
    item_id VARCHAR,
    prompt VARCHAR,
    target VARCHAR,
    output VARCHAR,
    score DOUBLE,
    logprobs DOUBLE[],
    extra JSON,
    min_k DOUBLE,
    min_k_plus DOUBLE
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
    p_value DOUBLE
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

VIEWS = """
-- the newest finished cell per (suite, model, variant, evaluator), primary metric only
CREATE OR REPLACE VIEW latest_scores AS
SELECT c.suite, c.model_name AS model, c.model_key, c.variant_name AS variant, c.variant_key,
       c.evaluator, c.evaluator_key, c.role, m.metric, m.value, m.stderr, m.n,
       m.higher_is_better, c.cell_key, c.finished_at
FROM cells c JOIN metrics m USING (cell_key)
WHERE c.status = 'done' AND m.is_primary
QUALIFY row_number() OVER (
    PARTITION BY c.suite, c.model_name, c.variant_name, c.evaluator
    ORDER BY c.finished_at DESC) = 1;

CREATE OR REPLACE VIEW leaderboard AS
SELECT s.suite, s.model, s.variant, coalesce(v.method, 'base') AS method, s.evaluator,
       s.role, s.metric, s.value, s.stderr, s.n, s.higher_is_better
FROM latest_scores s LEFT JOIN variants v ON v.variant_key = s.variant_key
ORDER BY s.suite, s.model, s.evaluator, s.variant = 'base' DESC, s.variant;

-- every tuned variant's newest primary score beside its own base's on the same evaluator
-- configuration: the pairing that forgetting, learning_forgetting, clean_scores and the
-- paired tests share
CREATE OR REPLACE VIEW base_pairs AS
SELECT t.suite, t.model, t.model_key, t.variant, t.variant_key, t.evaluator, t.evaluator_key,
       t.role, t.metric, t.higher_is_better, t.n, b.value AS base_value,
       t.value AS variant_value, b.cell_key AS base_cell_key, t.cell_key AS variant_cell_key
FROM latest_scores t
JOIN latest_scores b
  ON b.suite = t.suite AND b.model_key = t.model_key AND b.evaluator_key = t.evaluator_key
 AND b.metric = t.metric AND b.variant = 'base'
WHERE t.variant <> 'base';

-- what tuning cost on abilities it did not target: variant minus its own base
-- on the same evaluator configuration; ``forgetting`` > 0 means worse than base;
-- the paired test on the items' scores gives a 95% interval and a p-value
CREATE OR REPLACE VIEW forgetting AS
SELECT p.suite, p.model, p.variant, coalesce(v.method, '') AS method, p.evaluator, p.role,
       p.metric, p.base_value, p.variant_value, p.variant_value - p.base_value AS delta,
       CASE WHEN p.higher_is_better THEN p.base_value - p.variant_value
            ELSE p.variant_value - p.base_value END AS forgetting,
       p.n, t.test AS paired_test, t.delta AS item_delta, t.ci_low, t.ci_high, t.p_value
FROM base_pairs p
LEFT JOIN variants v ON v.variant_key = p.variant_key
LEFT JOIN paired_tests t
       ON t.variant_cell_key = p.variant_cell_key AND t.base_cell_key = p.base_cell_key
WHERE p.role IN ('general', 'safety')
ORDER BY p.suite, p.model, p.evaluator, p.variant;

-- each variant's gain on its target evaluators against its loss on general and safety ones,
-- both relative to the base's value (0.10 = 10% better, or worse); averaged over evaluators
CREATE OR REPLACE VIEW learning_forgetting AS
WITH changes AS (
    SELECT f.suite, f.model, f.variant, f.variant_key, f.role, t.p_value,
           (CASE WHEN f.higher_is_better THEN f.variant_value - f.base_value
                 ELSE f.base_value - f.variant_value END) / nullif(abs(f.base_value), 0) AS gain
    FROM base_pairs f
    LEFT JOIN paired_tests t
           ON t.variant_cell_key = f.variant_cell_key AND t.base_cell_key = f.base_cell_key
)
SELECT c.suite, c.model, c.variant, coalesce(v.method, '') AS method,
       avg(c.gain) FILTER (WHERE c.role = 'target') AS learning,
       count(*) FILTER (WHERE c.role = 'target') AS target_evaluators,
       avg(-c.gain) FILTER (WHERE c.role IN ('general', 'safety')) AS forgetting,
       count(*) FILTER (WHERE c.role IN ('general', 'safety')) AS general_evaluators,
       count(*) FILTER (WHERE c.role IN ('general', 'safety') AND c.gain < 0
                        AND c.p_value < 0.05) AS significant_losses,
       any_value(v.trainable_params) AS trainable_params, any_value(v.seconds) AS train_seconds
FROM changes c LEFT JOIN variants v ON v.variant_key = c.variant_key
GROUP BY c.suite, c.model, c.variant, v.method
ORDER BY c.suite, c.model, c.variant;

CREATE OR REPLACE VIEW contamination_summary AS
SELECT suite, model, variant, evaluator, method, any_value(dataset) AS dataset,
       count(*) AS items, count(*) FILTER (WHERE flagged) AS flagged,
       avg(CASE WHEN flagged THEN 1.0 ELSE 0.0 END) AS flagged_share,
       avg(score) AS mean_score, max(score) AS max_score
FROM contamination
GROUP BY suite, model, variant, evaluator, method
ORDER BY suite, model, variant, evaluator, method;

-- each variant's per-item mean score on every item and on the items no method flagged,
-- beside its base's on the same two sets; ``score`` is the evaluator's primary metric
CREATE OR REPLACE VIEW clean_scores AS
WITH flags AS (
    SELECT variant_key, evaluator_key, item_index, bool_or(flagged) AS flagged,
           string_agg(DISTINCT method, ', ' ORDER BY method) FILTER (WHERE flagged) AS flagged_by
    FROM contamination GROUP BY variant_key, evaluator_key, item_index
)
SELECT p.suite, p.model, p.variant, p.evaluator, p.role, p.metric, p.base_value AS base_score,
       p.variant_value AS score,
       count(*) AS items,
       count(*) FILTER (WHERE NOT coalesce(f.flagged, false)) AS clean_items,
       avg(s.score) AS item_mean,
       avg(s.score) FILTER (WHERE NOT coalesce(f.flagged, false)) AS clean_item_mean,
       avg(bs.score) AS base_item_mean,
       avg(bs.score) FILTER (WHERE NOT coalesce(f.flagged, false)) AS base_clean_item_mean,
       string_agg(DISTINCT f.flagged_by, '; ') AS flagged_by
FROM base_pairs p
JOIN samples s ON s.cell_key = p.variant_cell_key
LEFT JOIN samples bs ON bs.cell_key = p.base_cell_key AND bs.item_index = s.item_index
LEFT JOIN flags f ON f.variant_key = p.variant_key AND f.evaluator_key = p.evaluator_key
                 AND f.item_index = s.item_index
WHERE EXISTS (SELECT 1 FROM contamination c WHERE c.variant_key = p.variant_key
              AND c.evaluator_key = p.evaluator_key)
GROUP BY ALL
ORDER BY p.suite, p.model, p.evaluator, p.variant;
"""


#: every view ``VIEWS`` creates, in order
VIEW_NAMES = tuple(re.findall(r"CREATE OR REPLACE VIEW (\w+)", VIEWS))


