"""The store's views: what the tables mean, in SQL (docs/sql.md describes each).

Views are made again whenever a store is opened by a harness whose views differ, so a
change here needs no migration.
"""

from __future__ import annotations

import hashlib
import re

VIEWS = """
-- one row per evaluated item of every cell, with its item's text joined back: the columns,
-- in their order, of the samples table that schema versions 1 to 7 stored, then the
-- item's decontamination query (schema 9)
CREATE OR REPLACE VIEW samples AS
SELECT r.cell_key, r.item_index, r.item_id, t.prompt, t.target, r.output, r.score,
       r.logprobs, r.extra, r.min_k, r.min_k_plus, t.query
FROM sample_rows r LEFT JOIN item_texts t USING (text_key);

-- the newest finished cell per (suite, model, variant, evaluator), primary metric only
CREATE OR REPLACE VIEW latest_scores AS
SELECT c.suite, c.model_name AS model, c.model_key, c.variant_name AS variant, c.variant_key,
       c.evaluator, c.evaluator_key, c.role, m.metric, m.value, m.stderr, m.n,
       m.higher_is_better, c.cell_key, c.finished_at,
       -- what one item's score is (samples.score): the paired tests' and the gate's unit
       coalesce(json_extract_string(c.info, '$.item_score'), m.metric) AS unit
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
       t.value AS variant_value, b.cell_key AS base_cell_key, t.cell_key AS variant_cell_key,
       t.unit
FROM latest_scores t
JOIN latest_scores b
  ON b.suite = t.suite AND b.model_key = t.model_key AND b.evaluator_key = t.evaluator_key
 AND b.metric = t.metric AND b.variant = 'base'
WHERE t.variant <> 'base';

-- every variant trained on another variant (``from``) beside that parent, on the same
-- evaluator configuration
CREATE OR REPLACE VIEW parent_pairs AS
SELECT t.suite, t.model, t.model_key, t.variant, t.variant_key, p.variant AS parent,
       v.parent_key, t.evaluator, t.evaluator_key, t.role, t.metric, t.higher_is_better, t.n,
       p.value AS parent_value, t.value AS variant_value, p.cell_key AS parent_cell_key,
       t.cell_key AS variant_cell_key, t.unit
FROM latest_scores t
JOIN variants v ON v.variant_key = t.variant_key
JOIN latest_scores p
  ON p.suite = t.suite AND p.variant_key = v.parent_key AND p.evaluator_key = t.evaluator_key
 AND p.metric = t.metric
WHERE p.variant <> 'base';

-- what tuning cost on abilities it did not target: variant minus its own base
-- on the same evaluator configuration; ``forgetting`` > 0 means worse than base;
-- the paired test on the items' scores gives a 95% interval and a p-value
CREATE OR REPLACE VIEW forgetting AS
SELECT p.suite, p.model, p.variant, coalesce(v.method, '') AS method, p.evaluator, p.role,
       p.metric, p.base_value, p.variant_value, p.variant_value - p.base_value AS delta,
       CASE WHEN p.higher_is_better THEN p.base_value - p.variant_value
            ELSE p.variant_value - p.base_value END AS forgetting,
       p.n, t.test AS paired_test, t.delta AS item_delta, t.ci_low, t.ci_high, t.p_value,
       p.unit,
       CASE WHEN p.higher_is_better THEN 0 - t.delta ELSE t.delta END AS loss,
       CASE WHEN p.higher_is_better THEN 0 - t.ci_high ELSE t.ci_low END AS loss_low,
       CASE WHEN p.higher_is_better THEN 0 - t.ci_low ELSE t.ci_high END AS loss_high
FROM base_pairs p
LEFT JOIN variants v ON v.variant_key = p.variant_key
LEFT JOIN paired_tests t
       ON t.variant_cell_key = p.variant_cell_key AND t.base_cell_key = p.base_cell_key
WHERE p.role IN ('general', 'safety')
ORDER BY p.suite, p.model, p.evaluator, p.variant;

-- the same against each variant's parent, for variants trained on another (``from``):
-- what the last step of the lineage cost (DPO against its SFT, not against the base)
CREATE OR REPLACE VIEW parent_forgetting AS
SELECT p.suite, p.model, p.variant, coalesce(v.method, '') AS method, p.parent,
       p.evaluator, p.role, p.metric, p.parent_value, p.variant_value,
       p.variant_value - p.parent_value AS delta,
       CASE WHEN p.higher_is_better THEN p.parent_value - p.variant_value
            ELSE p.variant_value - p.parent_value END AS forgetting,
       p.n, t.test AS paired_test, t.delta AS item_delta, t.ci_low, t.ci_high, t.p_value,
       p.unit,
       CASE WHEN p.higher_is_better THEN 0 - t.delta ELSE t.delta END AS loss,
       CASE WHEN p.higher_is_better THEN 0 - t.ci_high ELSE t.ci_low END AS loss_low,
       CASE WHEN p.higher_is_better THEN 0 - t.ci_low ELSE t.ci_high END AS loss_high
FROM parent_pairs p
LEFT JOIN variants v ON v.variant_key = p.variant_key
LEFT JOIN paired_tests t
       ON t.variant_cell_key = p.variant_cell_key AND t.base_cell_key = p.parent_cell_key
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
-- scores only: sample_rows, not the samples view and its join with the items' texts
JOIN sample_rows s ON s.cell_key = p.variant_cell_key
LEFT JOIN sample_rows bs ON bs.cell_key = p.base_cell_key AND bs.item_index = s.item_index
LEFT JOIN flags f ON f.variant_key = p.variant_key AND f.evaluator_key = p.evaluator_key
                 AND f.item_index = s.item_index
WHERE EXISTS (SELECT 1 FROM contamination c WHERE c.variant_key = p.variant_key
              AND c.evaluator_key = p.evaluator_key)
GROUP BY ALL
ORDER BY p.suite, p.model, p.evaluator, p.variant;

-- the tree of variants: each with its parent, its root base, its depth (the base's
-- children are 1), its tuner entry, seed and swept values, how it was made and at which step
CREATE OR REPLACE VIEW lineage AS
WITH RECURSIVE chain(variant_key, depth) AS (
    SELECT variant_key, 1 FROM variants
    WHERE parent_key IS NULL OR parent_key = root_key OR parent_key NOT IN (
        SELECT variant_key FROM variants)
    UNION ALL
    SELECT v.variant_key, c.depth + 1 FROM variants v JOIN chain c ON v.parent_key = c.variant_key
)
SELECT v.suite, v.model_name AS model, v.name AS variant, v.variant_key, v.tuner, v.method,
       coalesce(p.name, 'base') AS parent, v.parent_key, v.root_key, max(c.depth) AS depth,
       v.seed, v.sweep, v.recipe_key, v.status, v.origin, v.step
FROM variants v
LEFT JOIN variants p ON p.variant_key = v.parent_key
JOIN chain c ON c.variant_key = v.variant_key
GROUP BY ALL
ORDER BY v.suite, v.model_name, depth, v.name;

-- per recipe (a tuner entry with its options and parent; seed replicates pooled) and
-- evaluator: the mean, standard deviation and count of the primary metric over seeds
CREATE OR REPLACE VIEW recipe_scores AS
SELECT s.suite, s.model, v.recipe_key, any_value(v.tuner) AS tuner,
       any_value(v.method) AS method, any_value(v.sweep) AS sweep,
       any_value(coalesce(p.tuner, 'base')) AS parent, s.evaluator, s.role, s.metric,
       any_value(s.higher_is_better) AS higher_is_better, count(*) AS n,
       avg(s.value) AS mean, stddev_samp(s.value) AS sd, min(s.value) AS min,
       max(s.value) AS max, string_agg(s.variant, ', ' ORDER BY s.variant) AS variants
FROM latest_scores s
JOIN variants v ON v.variant_key = s.variant_key
LEFT JOIN variants p ON p.variant_key = v.parent_key
WHERE v.recipe_key IS NOT NULL
GROUP BY s.suite, s.model, v.recipe_key, s.evaluator, s.role, s.metric
ORDER BY s.suite, s.model, s.evaluator, tuner, v.recipe_key;

-- two recipes on the same base and evaluator: Welch's t-test on their seed-level scores;
-- ``exceeds_seed_noise`` when p < 0.05 (each side needs two seeds or more)
CREATE OR REPLACE VIEW recipe_comparisons AS
SELECT t.suite, t.model, t.evaluator, t.metric,
       a.tuner AS tuner_a, a.sweep AS sweep_a, b.tuner AS tuner_b, b.sweep AS sweep_b,
       t.n_a, t.n_b, t.mean_a, t.mean_b, t.sd_a, t.sd_b, t.diff, t.t, t.df, t.p_value,
       t.p_value < 0.05 AS exceeds_seed_noise, t.recipe_a, t.recipe_b
FROM recipe_tests t
LEFT JOIN (SELECT DISTINCT recipe_key, tuner, sweep::VARCHAR AS sweep FROM variants) a
       ON a.recipe_key = t.recipe_a
LEFT JOIN (SELECT DISTINCT recipe_key, tuner, sweep::VARCHAR AS sweep FROM variants) b
       ON b.recipe_key = t.recipe_b
ORDER BY t.suite, t.model, t.evaluator, t.p_value;

-- each tuning run that kept checkpoints (eval_every), step by step: its checkpoints and its
-- final variant (at step = its steps) against the base on every target, general and safety
-- evaluator. Target evaluators: the gain in the metric's units (positive = better); general
-- and safety ones: forgetting's loss in item-score units (positive = worse), so the curve
-- reads on the gate's scale
CREATE OR REPLACE VIEW training_curve AS
WITH runs AS (
    -- the newest tuning under each name: an older one's checkpoints carry the same names
    SELECT * FROM variants WHERE origin = 'tuned'
    QUALIFY row_number() OVER (PARTITION BY suite, model_name, name
                               ORDER BY created_at DESC) = 1
), points AS (
    SELECT r.name AS run, r.variant_key AS run_key, r.tuner, r.method, v.variant_key, v.origin,
           CASE WHEN v.origin = 'checkpoint' THEN v.step ELSE v.steps END AS step
    FROM runs r
    JOIN variants v
      ON v.variant_key = r.variant_key
      -- a checkpoint's one source is its run's final variant
      OR (v.origin = 'checkpoint' AND v.sources->>'$[0]' = r.variant_key)
    WHERE EXISTS (SELECT 1 FROM variants c
                  WHERE c.origin = 'checkpoint' AND c.sources->>'$[0]' = r.variant_key)
)
SELECT b.suite, b.model, p.run, p.run_key, p.tuner, p.method, b.variant, b.variant_key,
       p.origin, p.step, b.evaluator, b.role, b.metric, b.higher_is_better, b.unit,
       b.base_value, b.variant_value AS value,
       CASE WHEN b.role <> 'target' THEN NULL
            WHEN b.higher_is_better THEN b.variant_value - b.base_value
            ELSE b.base_value - b.variant_value END AS gain,
       f.loss, f.loss_low, f.loss_high, t.p_value
FROM points p
JOIN base_pairs b ON b.variant_key = p.variant_key
LEFT JOIN paired_tests t
       ON t.variant_cell_key = b.variant_cell_key AND t.base_cell_key = b.base_cell_key
LEFT JOIN forgetting f
       ON f.suite = b.suite AND f.model = b.model AND f.variant = b.variant
      AND f.evaluator = b.evaluator
WHERE b.role IN ('target', 'general', 'safety')
ORDER BY b.suite, b.model, p.run, b.evaluator, p.step;

-- every variant (tuned, checkpoint, transformed) and the base as points of learning against
-- forgetting (learning_forgetting's relative means). The base is the point (0, 0): a
-- variant below it on both axes is worse than not tuning at all. ``comparable``: scored on
-- every target, general and safety evaluator the base was, so that its means are over the
-- same evaluators as the base's (a checkpoint limited by checkpoint_evaluators is not).
-- ``on_frontier``: comparable, and no other comparable point of the same suite and model
-- learns at least as much and forgets at most as much, one of the two strictly (Pareto)
CREATE OR REPLACE VIEW frontier AS
WITH keys AS (
    -- the variant whose scores learning_forgetting averaged (the newest under each name)
    SELECT suite, model, variant, arg_max(variant_key, finished_at) AS variant_key,
           count(*) FILTER (WHERE role = 'target') AS targets,
           count(*) FILTER (WHERE role IN ('general', 'safety')) AS generals
    FROM latest_scores GROUP BY suite, model, variant
), points AS (
    SELECT l.suite, l.model, l.variant, k.variant_key, v.origin, v.tuner, v.method,
           -- a tuned variant's point on its training curve: the steps it took
           CASE WHEN v.origin = 'tuned' THEN v.steps ELSE v.step END AS step,
           l.learning, l.forgetting, l.target_evaluators, l.general_evaluators,
           l.significant_losses,
           l.target_evaluators = b.targets AND l.general_evaluators = b.generals AS comparable
    FROM learning_forgetting l
    JOIN keys k USING (suite, model, variant)
    JOIN keys b ON b.suite = l.suite AND b.model = l.model AND b.variant = 'base'
    LEFT JOIN variants v ON v.variant_key = k.variant_key
    UNION ALL
    -- the base: no change against itself, on the roles it was scored on
    SELECT suite, model, variant, variant_key, 'base', NULL, NULL, NULL,
           CASE WHEN targets > 0 THEN 0.0 END, CASE WHEN generals > 0 THEN 0.0 END,
           targets, generals, 0, true
    FROM keys WHERE variant = 'base'
)
SELECT p.*,
       p.comparable AND p.learning IS NOT NULL AND p.forgetting IS NOT NULL AND NOT EXISTS (
           SELECT 1 FROM points o
           WHERE o.suite = p.suite AND o.model = p.model AND o.variant <> p.variant
             AND o.comparable AND o.learning >= p.learning AND o.forgetting <= p.forgetting
             AND (o.learning > p.learning OR o.forgetting < p.forgetting)) AS on_frontier
FROM points p
ORDER BY p.suite, p.model, p.learning DESC NULLS LAST, p.forgetting, p.variant;

-- may each variant ship? one row per variant and gated evaluator, with the variant's own
-- decision: NO-GO if any evaluator is, GO if all are, else INCONCLUSIVE
CREATE OR REPLACE VIEW gate AS
SELECT g.*,
       CASE WHEN bool_or(g.decision = 'NO-GO') OVER w THEN 'NO-GO'
            WHEN bool_and(g.decision = 'GO') OVER w THEN 'GO'
            ELSE 'INCONCLUSIVE' END AS variant_decision
FROM gate_decisions g
WINDOW w AS (PARTITION BY g.suite, g.model, g.variant_key)
ORDER BY g.suite, g.model, g.variant, g.evaluator;
"""


#: every view ``VIEWS`` creates, in order
VIEW_NAMES = tuple(re.findall(r"CREATE OR REPLACE VIEW (\w+)", VIEWS))



#: what a store records in ``meta`` ('views') to tell whether its views are these ones
VIEWS_HASH = hashlib.sha256(VIEWS.encode()).hexdigest()[:16]
