"""Checkpoints as variants and transforms, end to end on the tiny model: a checkpoint holds
the weights of a run stopped at its step, interpolation's ends reproduce the parent and the
variant in every stored metric, merges and quantisation make variants that are evaluated
like any other, keys make a re-run compute nothing, and every bad field is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest
from safetensors.torch import load_file

import harness
from harness.plugins import PluginHost
from harness.runner import run_suite

from .conftest import PREFERENCE_ROWS, small_suite, write_jsonl
from .test_bad_input import _check

LORA = 'options = { r = 4, alpha = 8, steps = 3, lr = 1e-2, batch_size = 4, max_length = 64 }'

# lora-a keeps its state after steps 1 and 2; stop2 is the same run told to stop at 2;
# lora-r2 has another rank, so a linear merge with lora-a cannot be made.
EXTRA = """
[[tuners]]
name = "stop2"
method = "lora"
data = "data/sft.jsonl"
options = { r = 4, alpha = 8, steps = 2, lr = 1e-2, batch_size = 4, max_length = 64 }

[[tuners]]
name = "lora-r2"
method = "lora"
data = "data/sft.jsonl"
options = { r = 2, alpha = 8, steps = 1, lr = 1e-2, batch_size = 4, max_length = 64 }

[[transforms]]
name = "interp"
kind = "interpolate"
of = ["lora-a"]
options = { alphas = [0.0, 0.5, 1.0] }

[[transforms]]
name = "early"
kind = "interpolate"
of = ["lora-a@step1"]
options = { alphas = [0.5] }

[[transforms]]
name = "merge"
kind = "merge"
of = ["lora-a"]
options = { combination_type = "linear", weights = [1.0] }

[[transforms]]
name = "clash"
kind = "merge"
of = ["lora-a", "lora-r2"]
options = { combination_type = "linear" }

[[transforms]]
name = "nf4"
kind = "quantize"
of = ["lora-a"]
"""


def _suite(root: Path, extra: str = EXTRA) -> Path:
    write_jsonl(root / "data" / "pref.jsonl", PREFERENCE_ROWS)
    suite = small_suite(root, extra=extra)
    suite.write_text(suite.read_text().replace(
        LORA, LORA + '\neval_every = 1\ncheckpoint_evaluators = ["text"]', 1))
    return suite


@pytest.fixture(scope="module")
def forgetting(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    suite = _suite(root)
    summary = run_suite(suite, show_progress=False)
    return suite, summary


def _rows(store: Path, sql: str, params=()) -> list[tuple]:
    with duckdb.connect(str(store), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def _metrics(store: Path, variant: str) -> dict[tuple[str, str], float]:
    return {(e, m): v for e, m, v in _rows(store, """
        SELECT c.evaluator, m.metric, m.value FROM cells c JOIN metrics m USING (cell_key)
        WHERE c.variant_name = ? AND c.status = 'done'""", [variant])}


def _adapter(path: str) -> dict:
    return load_file(Path(path) / "adapter_model.safetensors")


def test_checkpoints_are_variants_with_the_weights_of_a_run_stopped_there(forgetting):
    _, summary = forgetting
    store = summary.store_path
    rows = {name: (origin, step, sources, path) for name, origin, step, sources, path in _rows(
        store, "SELECT name, origin, step, sources, path FROM variants")}
    final_key = _rows(store, "SELECT variant_key FROM variants WHERE name = 'lora-a'")[0][0]
    assert rows["lora-a"][:2] == ("tuned", None)
    for step in (1, 2):
        origin, kept_at, sources, _ = rows[f"lora-a@step{step}"]
        assert (origin, kept_at, json.loads(sources)) == ("checkpoint", step, [final_key])
    assert "lora-a@step3" not in rows  # the final state is lora-a itself
    # the same seed, stopped at step 2: the same adapter, tensor for tensor
    kept, stopped = _adapter(rows["lora-a@step2"][3]), _adapter(rows["stop2"][3])
    assert kept.keys() == stopped.keys()
    assert all((kept[k] == stopped[k]).all() for k in kept)
    assert not all((kept[k] == _adapter(rows["lora-a"][3])[k]).all() for k in kept)
    # checkpoint_evaluators: the checkpoints are scored by 'text' only
    cells = _rows(store, "SELECT evaluator FROM cells WHERE variant_name LIKE 'lora-a@step_'")
    assert sorted(c[0] for c in cells) == ["text", "text"]
    assert _metrics(store, "lora-a@step2")[("text", "perplexity")] == pytest.approx(
        _metrics(store, "stop2")[("text", "perplexity")], rel=1e-9)


def test_interpolation_ends_reproduce_the_parent_and_the_variant(forgetting):
    _, summary = forgetting
    store = summary.store_path
    base, tuned = _metrics(store, "base"), _metrics(store, "lora-a")
    assert _metrics(store, "lora-a~interp0") == base  # every stored metric, exactly
    assert _metrics(store, "lora-a~interp1") == tuned
    middle = _metrics(store, "lora-a~interp0.5")
    assert middle.keys() == base.keys() and middle != base and middle != tuned
    kinds = dict(_rows(store, "SELECT name, kind FROM variants WHERE origin = 'transformed'"))
    assert kinds["lora-a~interp0.5"] == "adapter"  # a LoRA scaled, served as a LoRA
    # α = 0.5 of a LoRA is that LoRA with its B matrices halved
    paths = dict(_rows(store, "SELECT name, path FROM variants"))
    half, full = _adapter(paths["lora-a~interp0.5"]), _adapter(paths["lora-a"])
    for name, tensor in full.items():
        expected = tensor * 0.5 if "lora_B" in name else tensor
        assert (half[name] == expected).all(), name
    # a transform of a checkpoint: its parent is the checkpoint's (the base)
    parent = _rows(store, "SELECT parent FROM lineage WHERE variant = 'lora-a@step1~early0.5'")
    assert parent == [("base",)]


def test_merges_and_quantisation_are_variants_like_any_other(forgetting):
    _, summary = forgetting
    store = summary.store_path
    tuned = _metrics(store, "lora-a")
    merged = _metrics(store, "merge(lora-a)")  # linear, one adapter, weight 1: the adapter
    assert merged.keys() == tuned.keys()
    assert all(merged[k] == pytest.approx(tuned[k], rel=1e-5) for k in tuned)
    quantised = _metrics(store, "lora-a~nf4")
    assert quantised.keys() == tuned.keys()
    text = ("text", "perplexity")
    assert quantised[text] != tuned[text]
    assert quantised[text] == pytest.approx(tuned[text], rel=0.25)
    recipe = json.loads(_rows(store, "SELECT recipe FROM variants WHERE name = 'lora-a~nf4'")[0][0])
    assert recipe["kind"] == "quantize" and recipe["of"] == ["lora-a"]


def test_a_merge_that_cannot_be_made_fails_its_cells_naming_the_variants(forgetting):
    _, summary = forgetting
    failed = _rows(summary.store_path, "SELECT DISTINCT variant_name, error FROM cells "
                                       "WHERE status = 'failed'")
    assert [name for name, _ in failed] == ["clash(lora-a,lora-r2)"]
    error = failed[0][1]
    assert error.startswith("making 'clash(lora-a,lora-r2)' failed")
    assert "'lora-a'" in error and "'lora-r2'" in error
    assert summary.failed == 2  # its two cells, nothing else


def test_a_rerun_computes_nothing(forgetting):
    suite, first = forgetting
    again = run_suite(suite, show_progress=False)
    assert again.done == 0 and again.cached == first.planned - first.failed
    assert again.failed == 2  # the merge that cannot be made is tried again, and fails again


def test_a_checkpoint_whose_folder_is_gone_is_kept_again_by_its_run(tmp_path):
    suite = _suite(tmp_path, extra="")
    assert run_suite(suite, show_progress=False).failed == 0
    store = tmp_path / "results" / "small.duckdb"
    path = Path(_rows(store, "SELECT path FROM variants WHERE name = 'lora-a@step1'")[0][0])
    before = _adapter(str(path))
    shutil.rmtree(path)
    # a transform of that checkpoint, added later, needs its weights
    suite.write_text(suite.read_text() + '[[transforms]]\nname = "early"\nkind = "interpolate"\n'
                     'of = ["lora-a@step1"]\noptions = { alphas = [1.0] }\n')
    summary = run_suite(suite, show_progress=False)
    assert summary.failed == 0 and summary.done == 2  # the transform's two cells
    after = _adapter(str(path))
    assert all((before[k] == after[k]).all() for k in before)
    assert _metrics(store, "lora-a@step1~early1")[("text", "perplexity")] == \
        _metrics(store, "lora-a@step1")[("text", "perplexity")]
    # another alpha makes only its own variant: the others keep their keys and cells
    suite.write_text(suite.read_text().replace("alphas = [1.0]", "alphas = [1.0, 0.5]"))
    summary = run_suite(suite, show_progress=False)
    assert summary.failed == 0 and summary.done == 2
    made = _rows(store, "SELECT DISTINCT variant_name FROM cells WHERE run_id = ?",
                 [summary.run_id])
    assert made == [("lora-a@step1~early0.5",)]


def test_a_variant_folder_name_stays_short_however_many_sources():
    from harness.plan import folder_name

    model = harness.ResolvedModel("tiny", "builtin:tiny-random", Path("."), "f" * 64)
    name = "merge(" + ",".join(f"a-long-entry-name-seed{i}" for i in range(40)) + ")"
    folder = folder_name(model, name, "0123456789abcdef")
    assert len(folder) <= 113 and folder.endswith("-0123456789ab")
    assert "(" not in folder and "," not in folder
    assert folder_name(model, "lora-a", "0123456789abcdef") == "tiny-lora-a-0123456789ab"


def test_a_third_party_transform_through_the_hook(tmp_path):
    class ZeroOptions(harness.Options):
        pass

    class Zero(harness.Transform):
        """The parent again: an adapter with every B matrix zero."""

        Options = ZeroOptions

        def apply(self, job: harness.TransformJob) -> harness.TransformResult:
            from safetensors.torch import save_file

            out = job.output_dir / "adapter"
            shutil.copytree(job.sources[0].path, out)
            tensors = _adapter(str(out))
            save_file({k: v * 0 if "lora_B" in k else v for k, v in tensors.items()},
                      out / "adapter_model.safetensors")
            return harness.TransformResult("adapter", out)

    class Plugin:
        @harness.hookimpl
        def harness_register_transforms(self, register):
            register("acme/zero", Zero)

    suite = small_suite(tmp_path, extra='[[transforms]]\nname = "zero"\nkind = "acme/zero"\n'
                                         'of = "lora-a"\n')
    host = PluginHost.load(entry_points=False, extra_plugins=[Plugin()])
    summary = run_suite(suite, host=host, show_progress=False)
    assert summary.failed == 0
    assert _metrics(summary.store_path, "lora-a~zero") == _metrics(summary.store_path, "base")


# (what to change in the suite, what the one error line must contain)
BAD = {
    "eval_every not below the steps": (
        lambda t: t.replace("eval_every = 1", "eval_every = 3"),
        "[[tuners]] #1 ('lora-a') field 'eval_every': 3 is not below the 3 steps the tuner "
        "takes; no checkpoint would be kept"),
    "eval_every of 0": (lambda t: t.replace("eval_every = 1", "eval_every = 0"),
                        "field 'eval_every': Input should be greater than 0"),
    "eval_every on a tuner that counts no steps": (
        lambda t: t + '\n[[tuners]]\nname = "rl"\nmethod = "grpo"\ndata = "data/pref.jsonl"\n'
                      'eval_every = 1\noptions = { batch_size = 4, max_length = 128 }\n',
        "[[tuners]] #4 ('rl') field 'eval_every': the tuner 'grpo' cannot keep checkpoints "
        "with these options (it does not say beforehand how many steps it takes); set "
        "options.steps"),
    "checkpoint_evaluators naming nothing": (
        lambda t: t.replace('checkpoint_evaluators = ["text"]', 'checkpoint_evaluators = ["txt"]'),
        "[[tuners]] #1 ('lora-a') field 'checkpoint_evaluators': no evaluator is named 'txt'"),
    "checkpoint_evaluators without eval_every": (
        lambda t: t.replace("eval_every = 1\n", "").replace('of = ["lora-a@step1"]',
                                                             'of = ["lora-a"]'),
        "field 'checkpoint_evaluators': needs 'eval_every'"),
    "of naming nothing": (
        lambda t: t.replace('of = ["lora-a"]\noptions = { alphas', 'of = ["lora-b"]\noptions = { alphas'),
        "[[transforms]] #1 ('interp') field 'of': no tuner or transform entry is named 'lora-b'"),
    "of an empty list": (lambda t: t.replace('of = ["lora-a"]\noptions = { alphas',
                                             'of = []\noptions = { alphas'),
                         "[[transforms]] #1 ('interp') field 'of': List should have at least 1 item"),
    "of a checkpoint not kept": (
        lambda t: t.replace('of = ["lora-a@step1"]', 'of = ["lora-a@step7"]'),
        "[[transforms]] #2 ('early') field 'of': 'lora-a' keeps no checkpoint at step 7 "
        "(steps: 1, 2)"),
    "of a checkpoint of an entry without eval_every": (
        lambda t: t.replace('of = ["lora-a@step1"]', 'of = ["stop2@step1"]'),
        "'stop2' keeps no checkpoint at step 1 (it has no 'eval_every')"),
    "of itself": (lambda t: t.replace('of = ["lora-a@step1"]', 'of = ["early"]'),
                  "[[transforms]] #2 ('early') field 'of': 'early' is this entry itself"),
    "a cycle of transforms": (
        lambda t: t.replace('of = ["lora-a@step1"]', 'of = ["nf4"]')
                   .replace('name = "nf4"\nkind = "quantize"\nof = ["lora-a"]',
                            'name = "nf4"\nkind = "quantize"\nof = ["early"]'),
        "field 'of': 'of' makes a cycle: 'early' -> 'nf4' -> 'early'"),
    "a merge of variants of different parents": (
        lambda t: t + '\n[[tuners]]\nname = "dpo"\nmethod = "dpo"\nfrom = "lora-a"\n'
                      'data = "data/pref.jsonl"\noptions = { steps = 1, batch_size = 4, '
                      'max_length = 64 }\n\n[[transforms]]\nname = "mixed"\nkind = "merge"\n'
                      'of = ["lora-a", "dpo"]\n',
        "[[transforms]] #6 ('mixed') field 'of': combines variants made of different parents "
        "('lora-a' of 'the base', 'dpo' of 'lora-a'); they must share one"),
    "an alpha above 1": (lambda t: t.replace("alphas = [0.0, 0.5, 1.0]", "alphas = [0.5, 1.5]"),
                         "[[transforms]] #1 ('interp') field 'options.alphas"),
    "an unknown transform kind": (
        lambda t: t.replace('kind = "quantize"', 'kind = "quantise"'),
        "[[transforms]] #5 ('nf4') field 'kind': unknown transform 'quantise'"),
    "a transform named like a tuner": (
        lambda t: t.replace('name = "nf4"', 'name = "stop2"'),
        "[[transforms]] #5 ('stop2') field 'name': duplicate name, first used by [[tuners]] #2"),
    "of naming an entry twice": (
        lambda t: t.replace('of = ["lora-a"]\noptions = { alphas', 'of = ["lora-a", "lora-a"]\n'
                                                                  'options = { alphas'),
        "[[transforms]] #1 ('interp') field 'of': names 'lora-a' twice"),
    "of a checkpoint of a transform entry": (
        lambda t: t.replace('of = ["lora-a@step1"]', 'of = ["interp@step1"]'),
        "[[transforms]] #2 ('early') field 'of': 'interp' is a transform entry; only a tuner "
        "entry keeps checkpoints"),
    "merge weights for another number of sources": (
        lambda t: t.replace('options = { combination_type = "linear" }',
                            'options = { combination_type = "linear", weights = [1.0] }'),
        "[[transforms]] #4 ('clash') field 'options': 'weights' lists 1 numbers; give one per "
        "source variant (2 source variants: 'lora-a', 'lora-r2')"),
    "a transform named base": (lambda t: t.replace('name = "nf4"', 'name = "base"'),
                               "[[transforms]] #5 ('base') field 'name': 'base' is reserved"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_checkpoint_and_transform_fields(tmp_path, case):
    change, expected = BAD[case]
    suite = _suite(tmp_path)
    suite.write_text(change(suite.read_text()))
    _check(tmp_path, suite, expected)  # validate and run: one line, exit 2, nothing written
