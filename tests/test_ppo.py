"""The ppo tuner (the project's own PPO: plugins/tuners/ppo.py, ppo_loop.py) on the tiny model.

It learns (the reward rises while ``kl_coef`` bounds the KL to the reference), stays at the
reference when ``kl_coef`` is large, does not move when the reward is constant, resumes a
killed run to the same weights as a run never stopped, and trains and keeps a reward model.
The arithmetic itself is checked by hand in test_ppo_math.py. As in test_rl.py, LoRA also
sits on the tiny model's ``lm_head``, where it can move the next-token distribution.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from harness import TuneJob
from harness.errors import DataError, UserError
from harness_plugins.rewards.reward_model import RewardModelOptions, RewardModelReward
from harness_plugins.rewards.rules import ContainsOptions, ContainsReward
from harness_plugins.tuners import ppo, ppo_loop
from harness_plugins.tuners.ppo import PPOOptions, PPOTuner

from .test_rl import PREFERENCE_ROWS, PROMPTS, REWARDS, _base_and_tuned, write_jsonl

FAST = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "lm_head"], "lr": 2e-2,
        "batch_size": 16, "max_completion_length": 6, "temperature": 1.0}
HAS_E = {"reward": "contains", "reward_options": {"pattern": "e"}}


def _job(tiny_model, tmp_path, rows, name="ppo", **fields):
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / name
    out.mkdir(exist_ok=True)
    return TuneJob(tiny_model, name, data, out, seed=0, rewards=dict(REWARDS), **fields)


def _train(tiny_model, tmp_path, name, save_every=None, **options):
    from transformers import set_seed

    set_seed(0)
    job = _job(tiny_model, tmp_path, [{"prompt": p} for p in PROMPTS], name,
               save_every=save_every)
    result = PPOTuner(PPOOptions(**{**FAST, **options})).tune(job)
    log = json.loads((job.output_dir / "rl_log.json").read_text())
    return result, log["steps"]


@pytest.fixture(scope="module")
def by_kl_coef(tmp_path_factory, tiny_model):
    """16 updates on "contains an e" at three KL coefficients, trained once for the module."""
    runs = {}
    for kl_coef in (0.0, 0.2, 10.0):
        runs[kl_coef] = _train(tiny_model, tmp_path_factory.mktemp("kl"), "ppo", steps=16,
                               kl_coef=kl_coef, **HAS_E)
    return runs


def _mean(history, key, last):
    values = [h[key] for h in history[-last:]]
    return sum(values) / len(values)


def test_reward_rises_while_the_kl_penalty_bounds_the_kl(by_kl_coef, tiny_model):
    result, history = by_kl_coef[0.2]
    assert result.record.steps == 16 and len(result.record.loss_curve) == 16
    # rollouts of the last updates score above the first update's (sampled from the base)
    assert _mean(history, "objective/scores", 4) > history[0]["objective/scores"] + 0.1
    # and so do fresh samples of the tuned policy against the base's, from one seed
    before, after = _base_and_tuned(tiny_model, result.path,
                                    ContainsReward(ContainsOptions(pattern="e")))
    assert after > before + 0.1, (before, after)
    # the KL per completion: without a penalty it keeps growing; with 0.2 it levels off lower
    free = by_kl_coef[0.0][1]
    assert _mean(free, "objective/kl", 4) > 2 * _mean(history, "objective/kl", 4)
    assert max(h["objective/kl"] for h in history[8:]) < max(h["objective/kl"] for h in free[8:])


def test_a_large_kl_coefficient_keeps_the_policy_at_the_reference(by_kl_coef):
    held = by_kl_coef[10.0][1]
    free = by_kl_coef[0.0][1]
    assert _mean(held, "objective/kl", 8) < 0.1 * _mean(free, "objective/kl", 8)
    assert max(h["objective/kl"] for h in held) < 0.15 * max(h["objective/kl"] for h in free)
    assert max(h["objective/kl"] for h in held) < 3.0  # nats over 6 tokens: under 0.5 a token


def test_a_constant_reward_does_not_move_the_policy(tmp_path, tiny_model):
    # "^" matches every completion: the reward is 1 whatever the policy says. The values start
    # at the first batch's mean score, so every advantage is 0 and so is every update.
    result, history = _train(tiny_model, tmp_path, "constant", steps=6, kl_coef=0.05,
                             reward="contains", reward_options={"pattern": "^"})
    assert [h["objective/scores"] for h in history] == [1.0] * 6
    assert [h["objective/kl"] for h in history] == [0.0] * 6
    weights = load_file(result.path / "adapter_model.safetensors")
    lora_b = [name for name in weights if "lora_B" in name]
    assert lora_b and all(not weights[name].any() for name in lora_b)  # still peft's zeros


class Killed(Exception):
    """Stands for the process being killed between two updates."""


def test_a_killed_run_resumes_to_the_weights_of_a_run_never_stopped(tmp_path, tiny_model):
    options = dict(steps=4, kl_coef=0.05, checkpoint_every=2, **HAS_E)
    whole, whole_history = _train(tiny_model, tmp_path / "whole", "whole", save_every=2,
                                  **options)
    assert sorted(whole.checkpoints) == [2]  # the state after update 2 kept as a variant
    assert (whole.checkpoints[2] / "adapter_model.safetensors").is_file()

    from transformers import set_seed

    set_seed(0)
    job = _job(tiny_model, tmp_path, [{"prompt": p} for p in PROMPTS], "killed", save_every=2)

    def kill_at_3(step, total, loss):
        if step == 3:
            raise Killed
    job.on_step = kill_at_3
    with pytest.raises(Killed):
        PPOTuner(PPOOptions(**{**FAST, **options})).tune(job)
    assert [p.name for p in (job.output_dir / "trainer").iterdir()] == ["update-2"]

    set_seed(1234)  # the resumed run takes its random state from the saved one, not from here
    seen = []
    job.on_step = lambda step, total, loss: seen.append((step, total))
    resumed = PPOTuner(PPOOptions(**{**FAST, **options})).tune(job)
    assert seen == [(3, 4), (4, 4)]
    assert not (job.output_dir / "trainer").exists()
    expected = load_file(whole.path / "adapter_model.safetensors")
    got = load_file(resumed.path / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    history = json.loads((job.output_dir / "rl_log.json").read_text())["steps"]
    assert [h["objective/scores"] for h in history] == [h["objective/scores"] for h in whole_history]
    assert resumed.record.loss_curve == whole.record.loss_curve
    assert sorted(resumed.checkpoints) == [2]


def test_a_half_written_state_is_not_resumed_from(tmp_path):
    folder = tmp_path / "trainer"
    (folder / "update-2").mkdir(parents=True)
    (folder / "update-2" / "state.pt").write_bytes(b"complete enough to be picked")
    (folder / "update-4.partial").mkdir()
    (folder / "update-4.partial" / "state.pt").write_bytes(b"cut short")
    (folder / "update-6").mkdir()  # renamed into place only once whole: never without state.pt
    assert ppo_loop.last_state(folder) == folder / "update-2"
    assert ppo_loop.last_state(tmp_path / "none") is None


def test_trains_a_reward_model_raises_its_score_and_resumes_without_retraining(
        tmp_path, tiny_model, monkeypatch):
    from transformers import set_seed

    set_seed(0)
    job = _job(tiny_model, tmp_path, PREFERENCE_ROWS, "ppo-rm")
    # The reward model's scores sit far from 0 (near -4); the values start at the first
    # batch's mean score, so trl's default value clip (0.2 per update) is enough.
    options = PPOOptions(keep_reward_model=True, reward_model_steps=30, reward_model_lr=1e-2,
                         steps=12, kl_coef=0.0, checkpoint_every=6, **FAST)

    def kill_at_7(step, total, loss):
        if step == 7:
            raise Killed
    job.on_step = kill_at_7
    with pytest.raises(Killed):
        PPOTuner(options).tune(job)
    saved = json.loads((job.output_dir / "trainer" / "reward_model" / "harness_reward_model.json")
                       .read_text())

    def no_retraining(*args, **kwargs):
        raise AssertionError("the resumed run trained its reward model again")
    monkeypatch.setattr(ppo, "train_reward_model", no_retraining)
    job.on_step = lambda step, total, loss: None
    result = PPOTuner(options).tune(job)

    log = json.loads((job.output_dir / "rl_log.json").read_text())
    assert log["reward_model_steps"] == 30 and log["reward_model_loss"] == saved["reward_model_loss"]
    assert log["reward_model_pair_accuracy"] == 1.0
    assert log["reward_model_loss"][-1] < log["reward_model_loss"][0]
    assert [h["step"] for h in log["steps"]] == list(range(1, 13))
    assert result.record.train_tokens > saved["reward_model_tokens"]
    kept = job.output_dir / "reward_model"
    assert (kept / "model.safetensors").is_file() and not list(kept.glob("*.bin"))
    assert sorted(p.name for p in job.output_dir.iterdir()) == ["adapter", "reward_model",
                                                               "rl_log.json"]
    # the kept reward model, through the reward-model reward, scores the tuned policy higher
    reward = RewardModelReward(RewardModelOptions(path=kept))
    before, after = _base_and_tuned(tiny_model, result.path, reward)
    assert after > before + 2.0, (before, after)


# -- what it records ------------------------------------------------------------------------


def test_record_and_log(by_kl_coef):
    result, history = by_kl_coef[0.2]
    record = result.record
    assert [round(h["loss"], 12) for h in history] == [round(x, 12) for x in record.loss_curve]
    # the adapter and the value head (one weight per hidden unit, one bias) are trained
    head = 64 + 1
    assert record.trainable_params > head and record.total_params > record.trainable_params
    assert record.train_tokens > 16 * 16 and record.seconds > 0 and record.peak_memory_mb > 0
    assert {"objective/scores", "objective/kl", "objective/entropy", "policy/clipfrac_avg",
            "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg", "seconds"} <= set(history[0])
    assert all(0 < h["completion_length"] <= 6 for h in history)


# -- errors ---------------------------------------------------------------------------------


def test_options_that_cannot_form_batches_are_rejected():
    with pytest.raises(ValidationError, match="must be a multiple of num_mini_batches"):
        PPOOptions(batch_size=6, num_mini_batches=4)
    with pytest.raises(ValidationError, match="reward_options needs reward"):
        PPOOptions(reward_options={"target_words": 3})
    with pytest.raises(ValidationError, match=r"max_completion_length \(64\) must be less"):
        PPOOptions(max_length=64)
    with pytest.raises(ValidationError, match="kl_estimator"):
        PPOOptions(kl_estimator="k2")


def test_data_errors_name_the_file(tmp_path, tiny_model):
    job = _job(tiny_model, tmp_path, [{"prompt": p} for p in PROMPTS[:3]])
    with pytest.raises(DataError, match=r"data.jsonl: 3 distinct prompts; ppo needs at least"):
        PPOTuner(PPOOptions(reward="length", batch_size=4)).tune(job)
    # without a registered reward every row must be a preference row
    job = _job(tiny_model, tmp_path, PREFERENCE_ROWS[:2] + [{"prompt": "Hi"}])
    with pytest.raises(DataError, match=r"data.jsonl:3: field 'chosen': Field required"):
        PPOTuner(PPOOptions(batch_size=2)).tune(job)


def test_without_a_reward_model_plugin_it_says_so(tmp_path, tiny_model):
    job = _job(tiny_model, tmp_path, PREFERENCE_ROWS)
    job.rewards.pop("reward-model")
    with pytest.raises(UserError, match="no plugin registers it"):
        PPOTuner(PPOOptions(batch_size=2, steps=1)).tune(job)


def test_a_model_whose_logits_are_not_its_output_layer_is_refused(tiny_model):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from harness_plugins.tuners.training import lora_config

    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model.path),
                            lora_config(PPOOptions(dropout=0.1)))
    model = ppo_loop.PolicyWithValue(policy, temperature=1.0)
    model.check_logits([1, 5, 7])  # a Llama: logits = lm_head(last hidden state)
    assert all(m.p == 0 for m in policy.modules() if isinstance(m, torch.nn.Dropout))
    layer = model.output_layer
    model.output_layer = lambda hidden: 0.5 * layer(hidden)  # as if the model scaled its logits
    with pytest.raises(UserError, match="logits are not its output layer"):
        model.check_logits([1, 5, 7])


def test_the_reward_models_pad_token_is_a_spare_special_token_or_an_error():
    class Tokenizer:
        eos_token_id = pad_token_id = 2
        unk_token = None
        all_special_tokens = ["<eos>", "<bos>", "<sep>"]
        pad_token = "<eos>"

        def convert_tokens_to_ids(self, token):
            return {"<eos>": 2, "<bos>": 1, "<sep>": 3}[token]

    tokenizer = Tokenizer()
    ppo.pick_pad_token(tokenizer, [[1, 5, 7]])  # <bos> is in a prompt, <sep> is spare
    assert tokenizer.pad_token == "<sep>"
    with pytest.raises(UserError, match="no padding token apart from EOS"):
        ppo.pick_pad_token(Tokenizer(), [[1, 5, 7], [3]])  # <sep> is used too


def test_a_model_without_an_eos_token_is_refused():
    class Nothing:
        eos_token_id = None

    class Policy:
        generation_config = Nothing()

    with pytest.raises(UserError, match="no EOS token"):
        ppo.stop_tokens(Nothing(), Policy())


def test_updates_are_planned_only_when_steps_are_set():
    assert PPOTuner.planned_steps(PPOOptions(steps=7), rows=100) == 7
    assert PPOTuner.planned_steps(PPOOptions(), rows=100) is None


def test_the_less_common_options_train_as_documented(tmp_path, tiny_model):
    # 8 rollouts in two micro-batches of 4, two mini-batches, a state after every update
    # (each replacing the last), k3 KL, whitened rewards, a missing-EOS penalty, linear
    # schedule with one warm-up update, no gradient clipping, LoRA dropout (switched off)
    result, history = _train(
        tiny_model, tmp_path, "options", steps=3, batch_size=4, gradient_accumulation=2,
        num_mini_batches=2, checkpoint_every=1, kl_estimator="k3", whiten_rewards=True,
        missing_eos_penalty=1.0, warmup=1, schedule="linear", max_grad_norm=None,
        dropout=0.1, gradient_checkpointing=True, **HAS_E)
    assert result.record.steps == 3 and len(history) == 3
    # transformers' linear schedule with 1 warm-up update of 3: factors 0, 1, (3 - 2) / 2
    assert [h["lr"] for h in history] == [0.0, 2e-2, 1e-2]
    # "contains an e" scores 0 or 1; only the penalty can make a batch's mean negative
    assert min(h["objective/scores"] for h in history) < 0
    assert all(h["objective/kl"] >= 0 for h in history)  # k3 is never negative
    assert not (tmp_path / "options" / "trainer").exists()


# -- from a parent variant ------------------------------------------------------------------

PPO_FROM_SFT = """
[[tuners]]
name = "ppo"
method = "ppo"
from = "lora-a"
data = "data/prompts.jsonl"
options = { steps = 2, batch_size = 4, max_completion_length = 4, kl_coef = 0.05, reward = "contains", reward_options = { pattern = "^" } }
"""


def test_from_a_parent_the_reference_is_the_parent(tmp_path):
    import duckdb

    from harness.runner import run_suite

    from .conftest import small_suite

    write_jsonl(tmp_path / "data" / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    summary = run_suite(small_suite(tmp_path, extra=PPO_FROM_SFT), show_progress=False)
    assert summary.failed == 0
    with duckdb.connect(str(summary.store_path), read_only=True) as con:
        scores = dict(((v, e), x) for v, e, x in con.execute(
            "SELECT variant, evaluator, value FROM latest_scores").fetchall())
        [path] = con.execute("SELECT path FROM variants WHERE name = 'ppo'").fetchone()
    history = json.loads((Path(path).parent / "rl_log.json").read_text())["steps"]
    # The policy starts as the parent (its new adapter is 0) and the reference is the parent
    # too (adapter off): the first rollouts' KL is exactly 0. Against the root base it would
    # not be, since lora-a moved the model.
    assert history[0]["objective/kl"] == 0.0
    # a constant reward leaves the policy where it started: the child scores as its parent
    for evaluator in ("mc", "text"):
        assert scores[("ppo", evaluator)] == pytest.approx(scores[("lora-a", evaluator)], rel=1e-6)
    assert abs(scores[("ppo", "text")] - scores[("base", "text")]) > 1e-3
