"""Experiments on the tiny model: a variant trained on another (``from``), sweeps, seed
replicates, keys that chain, the gate's command, and every bad experiment field."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.runner import run_suite
from harness.suite_file import NAME_PATTERN

from .conftest import PREFERENCE_ROWS, small_suite, write_jsonl
from .test_bad_input import _check

PREFERENCES = PREFERENCE_ROWS

# lora-a (small_suite's tuner: r=4, alpha=8, steps=3, lr=1e-2, seed 0), a 2 x 2 sweep with
# two seeds whose point r=4, lr=0.01, seed 0 is lora-a again, and a DPO on top of lora-a
# whose learning rate is too small to move it: its weights stay lora-a's.
EXPERIMENT = """
[[tuners]]
name = "sweep"
method = "lora"
data = "data/sft.jsonl"
seeds = [0, 1]
options = { alpha = 8, steps = 3, batch_size = 4, max_length = 64 }
[tuners.sweep]
r = [2, 4]
lr = [0.001, 0.01]

[[tuners]]
name = "dpo"
method = "dpo"
from = "lora-a"
data = "data/pref.jsonl"
options = { r = 4, alpha = 8, steps = 1, lr = 1e-12, batch_size = 4, max_length = 64 }
"""


def _suite(root: Path) -> Path:
    write_jsonl(root / "data" / "pref.jsonl", PREFERENCES)
    return small_suite(root, extra=EXPERIMENT)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    suite = _suite(root)
    summary = run_suite(suite, show_progress=False)
    assert summary.failed == 0
    return suite, summary.store_path


def _rows(store: Path, sql: str, params=()) -> list[tuple]:
    with duckdb.connect(str(store), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def _scores(store: Path) -> dict[tuple[str, str], float]:
    return {(v, e): value for v, e, value in _rows(
        store, "SELECT variant, evaluator, value FROM latest_scores")}


def test_sweep_and_seeds_make_one_variant_per_point_and_seed(experiment):
    _, store = experiment
    rows = _rows(store, "SELECT name, tuner, seed, sweep, config FROM variants "
                        "WHERE tuner = 'sweep' ORDER BY name")
    assert [r[0] for r in rows] == [
        f"sweep-r{r}-lr{lr}-seed{seed}" for r in (2, 4) for lr in ("0.001", "0.01")
        for seed in (0, 1)]
    for name, _, seed, sweep, config in rows:
        assert re.fullmatch(NAME_PATTERN, name)  # a name a suite could give itself
        values = json.loads(sweep)
        options = json.loads(config)
        assert name == f"sweep-r{values['r']}-lr{values['lr']}-seed{seed}"
        assert (options["r"], options["lr"], options["steps"]) == (values["r"], values["lr"], 3)
    # SQL can group by the swept values: four recipes, two seeds each
    groups = _rows(store, "SELECT sweep->>'r', sweep->>'lr', count(DISTINCT seed), "
                          "count(DISTINCT recipe_key) FROM variants WHERE tuner = 'sweep' "
                          "GROUP BY ALL")
    assert len(groups) == 4 and all(g[2:] == (2, 1) for g in groups)
    recipe = _rows(store, "SELECT n, mean FROM recipe_scores WHERE tuner = 'sweep' "
                          "AND evaluator = 'text'")
    assert len(recipe) == 4 and all(n == 2 for n, _ in recipe)


def test_the_same_seed_twice_gives_the_same_variant(experiment):
    _, store = experiment
    scores = _scores(store)
    twin = "sweep-r4-lr0.01-seed0"  # lora-a's options and seed under another name
    for evaluator in ("mc", "text"):
        assert scores[(twin, evaluator)] == scores[("lora-a", evaluator)]
    # and another seed is another model
    assert scores[("sweep-r4-lr0.01-seed1", "text")] != scores[(twin, "text")]


def test_dpo_from_sft_starts_from_and_is_referenced_to_the_sft_model(experiment):
    _, store = experiment
    (base_key,) = _rows(store, "SELECT DISTINCT variant_key FROM cells WHERE variant_name = 'base'")[0]
    sft_key, sft_path = _rows(store, "SELECT variant_key, path FROM variants WHERE name = 'lora-a'")[0]
    parent, root, curve, path = _rows(
        store, "SELECT parent_key, root_key, loss_curve, path FROM variants WHERE name = 'dpo'")[0]
    assert (parent, root) == (sft_key, base_key)
    # Step 1's loss is computed before any update. With the SFT model as both the policy's
    # start and the reference, every implicit reward is 0 and the sigmoid loss is log 2.
    assert curve[0] == pytest.approx(math.log(2), abs=1e-5)
    # Under the root base as reference it would not be: the SFT model already prefers
    # some answers more than the base does, so the margins are not 0.
    margins = _implicit_margins(Path(sft_path).parent / "merged", _base_path(store))
    assert max(abs(m) for m in margins) > 1e-3
    # The starting weights are the SFT adapter merged into the base, as peft merges it,
    # and the DPO variant (which barely moved) scores as the SFT model, not as the base.
    _assert_merged_is_peft_merge(Path(sft_path), Path(sft_path).parent / "merged")
    scores = _scores(store)
    assert scores[("dpo", "text")] == pytest.approx(scores[("lora-a", "text")], rel=1e-5)
    assert abs(scores[("dpo", "text")] - scores[("base", "text")]) > 1e-3
    assert Path(path).parent.name.startswith("tiny-dpo-")


def test_forgetting_against_the_parent(experiment):
    _, store = experiment
    rows = _rows(store, "SELECT variant, parent, evaluator, parent_value, variant_value, "
                        "paired_test, loss FROM parent_forgetting ORDER BY evaluator")
    assert [(r[0], r[1], r[2]) for r in rows] == [("dpo", "lora-a", "mc"), ("dpo", "lora-a", "text")]
    assert rows[1][5] == "paired-t" and rows[0][5] == "mcnemar-midp"
    scores = _scores(store)
    assert rows[1][3] == scores[("lora-a", "text")] and rows[1][4] == scores[("dpo", "text")]


def _base_path(store: Path) -> Path:
    return Path(_rows(store, "SELECT path FROM models WHERE name = 'tiny'")[0][0])


def _implicit_margins(policy_path: Path, reference_path: Path) -> list[float]:
    """DPO's implicit reward margin (beta = 1) of each preference row, policy against
    reference: (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reference_path)

    def logprob(model, prompt: str, answer: str) -> float:
        ids = tokenizer(prompt + answer, return_tensors="pt").input_ids
        start = len(tokenizer(prompt).input_ids)
        with torch.no_grad():
            logits = model(ids).logits.log_softmax(-1)
        return float(sum(logits[0, i - 1, ids[0, i]] for i in range(start, ids.shape[1])))

    policy = AutoModelForCausalLM.from_pretrained(policy_path)
    reference = AutoModelForCausalLM.from_pretrained(reference_path)
    margins = []
    for row in PREFERENCES[:3]:
        chosen = logprob(policy, row["prompt"], row["chosen"]) - logprob(
            reference, row["prompt"], row["chosen"])
        rejected = logprob(policy, row["prompt"], row["rejected"]) - logprob(
            reference, row["prompt"], row["rejected"])
        margins.append(chosen - rejected)
    return margins


def _assert_merged_is_peft_merge(adapter: Path, merged: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = json.loads((adapter / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    expected = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().state_dict()
    found = AutoModelForCausalLM.from_pretrained(merged).state_dict()
    assert expected.keys() == found.keys()
    assert all(torch.equal(expected[k], found[k]) for k in expected)


def test_changing_one_swept_value_reruns_only_its_variants(experiment, tmp_path):
    suite, store = experiment
    root = tmp_path / "copy"
    shutil.copytree(suite.parent, root)
    copy = root / "suite.toml"
    before = dict(_rows(root / "results/small.duckdb", "SELECT name, variant_key FROM variants"))
    copy.write_text(copy.read_text().replace("lr = [0.001, 0.01]", "lr = [0.001, 0.005]"))
    summary = run_suite(copy, show_progress=False)
    # 2 ranks x 2 seeds at the new learning rate, 2 evaluators each
    assert (summary.done, summary.cached) == (8, summary.planned - 8)
    after = dict(_rows(root / "results/small.duckdb", "SELECT name, variant_key FROM variants"))
    assert {n for n in after if n not in before} == {
        f"sweep-r{r}-lr0.005-seed{s}" for r in (2, 4) for s in (0, 1)}
    # a parent's change re-runs it and its children, nothing else
    copy.write_text(copy.read_text().replace("lr = 1e-2", "lr = 2e-2"))
    summary = run_suite(copy, show_progress=False)
    assert summary.done == 4  # lora-a and dpo, 2 evaluators each
    newest = _rows(root / "results/small.duckdb",
                   "SELECT DISTINCT variant_name FROM cells WHERE run_id = ?", [summary.run_id])
    assert sorted(r[0] for r in newest) == ["dpo", "lora-a"]


def test_gate_command_exit_status(experiment, tmp_path):
    suite, store = experiment
    runner = CliRunner()
    # the tiny suite's 6 and 3 items cannot show that a loss is small: INCONCLUSIVE
    result = runner.invoke(main, ["gate", str(suite)])
    assert result.exit_code == 3, result.output
    assert "INCONCLUSIVE" in result.output
    # a loss this large is tolerated on both evaluators: every variant is GO
    generous = tmp_path / "generous.toml"
    generous.write_text(suite.read_text() + "\n[gate]\nmax_loss = 50.0\n")
    shutil.copytree(suite.parent / "data", tmp_path / "data")
    generous.write_text(generous.read_text().replace(
        'store = "results/small.duckdb"', f'store = "{store}"'))
    result = runner.invoke(main, ["gate", str(generous)])
    assert result.exit_code == 0, result.output
    # change lora-a without running: its new key (and dpo's, below it) has no cells yet,
    # so the gate cannot judge them on the old results
    generous.write_text(generous.read_text().replace("lr = 1e-2", "lr = 3e-2"))
    result = runner.invoke(main, ["gate", str(generous)])
    assert result.exit_code == 3, result.output
    assert "tiny/lora-a: INCONCLUSIVE" in result.output and "tiny/dpo: INCONCLUSIVE" in \
        result.output and "tiny/sweep-r2-lr0.001-seed0: GO" in result.output
    # a store whose gate found a significant loss above max_loss on one variant: NO-GO
    # for that variant (exit 1) and for it alone
    nogo = tmp_path / "nogo.duckdb"
    shutil.copy(store, nogo)
    with duckdb.connect(str(nogo)) as con:
        con.execute("UPDATE gate_decisions SET decision = 'NO-GO', reason = 'planted' "
                    "WHERE variant = 'dpo' AND evaluator = 'mc'")
        con.execute("UPDATE gate_decisions SET decision = 'GO' WHERE variant <> 'dpo' "
                    "OR evaluator <> 'mc'")
    assert runner.invoke(main, ["gate", str(nogo)]).exit_code == 1
    assert runner.invoke(main, ["gate", str(nogo), "--variant", "lora-a"]).exit_code == 0
    result = runner.invoke(main, ["gate", str(nogo), "--variant", "nope"])
    assert result.exit_code == 2 and "no such variant" in result.output
    view = _rows(nogo, "SELECT DISTINCT variant, variant_decision FROM gate ORDER BY variant")
    assert ("dpo", "NO-GO") in view and ("lora-a", "GO") in view


# (what to change in the experiment suite, what the one error line must contain)
BAD = {
    "from names nothing": (lambda t: t.replace('from = "lora-a"', 'from = "sfft"'),
                           "[[tuners]] #3 ('dpo') field 'from': no tuner entry is named 'sfft'"),
    "from makes a cycle": (lambda t: t.replace('name = "lora-a"', 'name = "lora-a"\nfrom = "dpo"'),
                           "field 'from': 'from' makes a cycle: 'lora-a' -> 'dpo' -> 'lora-a'"),
    "from itself": (lambda t: t.replace('from = "lora-a"', 'from = "dpo"'),
                    "'from' makes a cycle: 'dpo' -> 'dpo'"),
    "empty sweep list": (lambda t: t.replace("r = [2, 4]", "r = []"),
                         "[[tuners]] #2 ('sweep') field 'sweep.r': List should have at least 1 item"),
    "swept unknown option": (lambda t: t.replace("r = [2, 4]", "rank = [2, 4]"),
                             "field 'sweep.rank': the tuner 'lora' has no option 'rank'"),
    "swept value of the wrong type": (
        lambda t: t.replace("r = [2, 4]", 'r = [2, "four"]'),
        "field 'sweep.r': Input should be a valid integer, unable to parse string as an "
        "integer (swept value 'four')"),
    "swept and set": (lambda t: t.replace("options = { alpha = 8, steps = 3,",
                                          "options = { r = 2, alpha = 8, steps = 3,"),
                      "field 'sweep.r': set in 'options' and swept; keep one"),
    "no seeds": (lambda t: t.replace("seeds = [0, 1]", "seeds = []"),
                 "field 'seeds': List should have at least 1 item"),
    "a seed twice": (lambda t: t.replace("seeds = [0, 1]", "seeds = [1, 1]"),
                     "field 'seeds': seed 1 is listed twice"),
    "alpha of 0": (lambda t: t + "\n[gate]\nalpha = 0\n",
                   "[gate] field 'alpha': Input should be greater than 0"),
    "alpha of 1": (lambda t: t + "\n[gate]\nalpha = 1.0\n",
                   "[gate] field 'alpha': Input should be less than 1"),
    "gate on an unknown evaluator": (lambda t: t + '\n[gate]\nmax_loss = { mcc = 0.1 }\n',
                                     "[gate] field 'max_loss.mcc': no evaluator is named 'mcc'"),
    "a sweep point its tuner rejects": (
        lambda t: t.replace("lr = 1e-12, batch_size = 4, max_length = 64 }\n",
                            "lr = 1e-12, batch_size = 4, max_length = 64 }\n"
                            '[tuners.sweep]\nloss_type = ["sigmoid", "exo_pair"]\n'),
        "[[tuners]] #3 ('dpo') field 'sweep': 'exo_pair' needs label_smoothing > 0 (the EXO "
        "paper suggests 1e-3) (sweep point loss_type='exo_pair')"),
    "gate on a target evaluator": (
        lambda t: t.replace('kind = "perplexity"\ndata = "data/text.jsonl"\nrole = "general"',
                            'kind = "perplexity"\ndata = "data/text.jsonl"\nrole = "target"')
        + '\n[gate]\nevaluators = ["text"]\n',
        "[gate] field 'evaluators': 'text' is a target evaluator; the gate judges general and "
        "safety ones"),
    "gate on no evaluator": (lambda t: t + '\n[gate]\nevaluators = []\n',
                             "[gate] field 'evaluators': List should have at least 1 item"),
    "a swept value twice": (lambda t: t.replace("r = [2, 4]", "r = [2, 2]"),
                            "[[tuners]] #2 ('sweep') field 'sweep': 'r' lists 2 twice"),
    "a negative max_loss": (lambda t: t + "\n[gate]\nmax_loss = { mc = -0.1 }\n",
                            "[gate] field 'max_loss': must be a finite number >= 0, or a table"),
    "max_loss of the wrong type": (lambda t: t + '\n[gate]\nmax_loss = "small"\n',
                                   "[gate] field 'max_loss': must be a finite number >= 0"),
    "swept values that read alike": (lambda t: t.replace("lr = [0.001, 0.01]",
                                                          'lr = [0.001, "0.001"]'),
                                     "field 'name': makes a variant named "
                                     "'sweep-r2-lr0.001-seed0' twice"),
    "a seed out of range": (lambda t: t.replace("seeds = [0, 1]", "seeds = [-1]"),
                            "field 'seeds.0': Input should be greater than or equal to 0"),
    "a variant name taken twice": (
        lambda t: t.replace('name = "lora-a"', 'name = "sweep-r2-lr0.001-seed0"')
                   .replace('from = "lora-a"', 'from = "sweep-r2-lr0.001-seed0"'),
        "makes a variant named 'sweep-r2-lr0.001-seed0', as entry"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_experiment_fields(tmp_path, case):
    change, expected = BAD[case]
    suite = _suite(tmp_path)
    suite.write_text(change(suite.read_text()))
    _check(tmp_path, suite, expected)  # validate and run: one line, exit 2, nothing written
    result = CliRunner().invoke(main, ["gate", str(suite)])  # and the gate the same way
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"harness: error: {suite}") and expected in lines[0]


def test_gate_command_bad_input(experiment, tmp_path):
    _, store = experiment
    runner = CliRunner()
    missing = tmp_path / "none.duckdb"
    result = runner.invoke(main, ["gate", str(missing)])
    assert result.exit_code == 2 and f"{missing}: no such store" in result.output
    two = tmp_path / "two.duckdb"
    shutil.copy(store, two)
    with duckdb.connect(str(two)) as con:
        con.execute("UPDATE cells SET suite = 'other' WHERE variant_name = 'dpo'")
    result = runner.invoke(main, ["gate", str(two)])
    assert result.exit_code == 2 and "holds suites other, small; choose one with --name" \
        in result.output
    result = runner.invoke(main, ["gate", str(two), "--name", "nope"])
    assert result.exit_code == 2 and "no suite named 'nope' (suites: other, small)" in result.output
    assert runner.invoke(main, ["gate", str(two), "--name", "small"]).exit_code == 3
    empty = tmp_path / "empty.duckdb"  # a store whose gate was never recorded
    shutil.copy(store, empty)
    with duckdb.connect(str(empty)) as con:
        con.execute("DELETE FROM gate_decisions")
    result = runner.invoke(main, ["gate", str(empty)])
    assert result.exit_code == 3 and "no gate decisions recorded" in result.output


def test_variant_names_say_their_values_and_stay_valid_names():
    from harness.lineage import own_name, variant_name

    assert own_name("sft", {"r": 8, "lr": 1e-05}, 0, False) == "sft-r8-lr1e-05"
    assert own_name("dpo", {"loss_type": ["sigmoid", "ipo"], "x": True}, 2, True) == \
        "dpo-loss_typesigmoid_ipo-xtrue-seed2"
    assert own_name("sft", {"target_modules": "q_proj v/proj"}, 0, False) == \
        "sft-target_modulesq_proj_v_proj"
    # a child is named after its parent variant when the parent entry made several
    assert variant_name("dpo", {}, 0, False, "sft-seed1", 3) == "sft-seed1.dpo"
    assert variant_name("dpo", {}, 0, False, "sft", 1) == "dpo"
    for name in ("sft-r8-lr1e-05", "dpo-loss_typesigmoid_ipo-xtrue-seed2", "sft-seed1.dpo"):
        assert re.fullmatch(NAME_PATTERN, name)
