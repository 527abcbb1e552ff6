"""GRPO raises its reward; the built-in rewards compute what their docs say; both RL tuners
take their reward from the plugin registry (PPO's own tests: test_ppo.py).

The tiny model's logits barely move through its attention and MLP alone (its
random ``lm_head`` reads an RMS-normalised state), so the training tests also
train ``lm_head``: PPO (test_ppo.py) with LoRA on it; GRPO, whose trl trainer (from 1.16)
computes log-probabilities from ``lm_head.weight`` directly and refuses an
adapter there, with the whole layer trained beside the adapter (peft's
``modules_to_save``, whose trained copy is the weight trl reads). Rewards are
measured on completions sampled from the base and from base + adapter with the
same seed and the training temperature.
"""

from __future__ import annotations

import importlib
import json
import os

import pytest
import torch
from pydantic import ValidationError

from harness import TuneJob
from harness.errors import UserError
from harness_plugins.rewards.reward_model import RewardModelOptions, RewardModelReward
from harness_plugins.rewards.rules import (
    ContainsOptions,
    ContainsReward,
    LengthOptions,
    LengthReward,
)
from harness_plugins.tuners.grpo import GRPOOptions, GRPOTuner
from harness_plugins.tuners.ppo import PPOTuner
from harness_plugins.tuners.rl import message_text

from .conftest import TEXT_ROWS, write_jsonl

REWARDS = {"length": LengthReward, "contains": ContainsReward, "reward-model": RewardModelReward}
TOPICS = ["cats", "dogs", "rivers", "bread", "music", "stars", "trees", "the sea", "rain", "snow",
          "cheese", "boats", "birds", "clocks", "maps", "lamps"]
PROMPTS = [f"Say something about {topic}." for topic in TOPICS]
#: chosen rich in "e", rejected without: a preference the tiny policy can learn to serve
PREFERENCE_ROWS = [
    {"prompt": prompt, "chosen": "Here, see: the eerie green trees.",
     "rejected": "Oh! No, I am frank: aargh."}
    for prompt in PROMPTS
]
#: LoRA where the tiny model can move its next-token distribution (see the module docstring)
FAST = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "lm_head"], "lr": 2e-2,
        "batch_size": 16, "max_completion_length": 6, "temperature": 1.0}


def _job(tiny_model, tmp_path, rows, name="rl"):
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return TuneJob(tiny_model, name, data, out, seed=0, rewards=dict(REWARDS))


def _mean_reward(model, tokenizer, reward, max_new_tokens, temperature) -> float:
    """Mean reward of 4 sampled completions per prompt, from a fixed seed."""
    torch.manual_seed(1234)
    scores = []
    for prompt in PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                            add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=True,
                                 temperature=temperature, top_k=0, top_p=1.0,
                                 num_return_sequences=4, pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(out[:, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        scores += reward([prompt] * len(texts), texts)
    return sum(scores) / len(scores)


def _base_and_tuned(tiny_model, adapter, reward, max_new_tokens=6, temperature=1.0):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    base = AutoModelForCausalLM.from_pretrained(tiny_model.path).eval()
    before = _mean_reward(base, tokenizer, reward, max_new_tokens, temperature)
    tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
    after = _mean_reward(tuned, tokenizer, reward, max_new_tokens, temperature)
    return before, after


# -- the rewards' formulas ---------------------------------------------------------------


def test_length_reward_peaks_at_the_target_word_count():
    reward = LengthReward(LengthOptions(target_words=4))
    completions = ["", "one", "one two", "one two three four", "a b c d e f", "a b c d e f g h",
                   "a b c d e f g h i j", "  spaced\tout\nwords  here "]
    # max(0, 1 - |n - 4| / 4) with n = 0, 1, 2, 4, 6, 8, 10, 4
    assert reward(["p"] * len(completions), completions) == [0.0, 0.25, 0.5, 1.0, 0.5, 0.0, 0.0, 1.0]
    assert LengthReward()(["p"], ["word " * 50]) == [1.0]  # default target: 50 words
    with pytest.raises(ValidationError):
        LengthOptions(target_words=0)


def test_contains_reward_is_one_where_the_pattern_occurs():
    reward = ContainsReward(ContainsOptions(pattern=r"\bcat\b"))
    assert reward(["p"] * 4, ["a cat sat", "concatenate", "Cat", ""]) == [1.0, 0.0, 0.0, 0.0]
    loose = ContainsReward(ContainsOptions(pattern="cat", ignore_case=True))
    assert loose(["p"] * 3, ["Cat", "conCATenate", "dog"]) == [1.0, 1.0, 0.0]
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        ContainsOptions(pattern="(")


def test_reward_model_reward_scores_the_chat_rendered_pair(tmp_path, tiny_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    set_seed(0)
    folder = tmp_path / "rm"
    AutoModelForSequenceClassification.from_pretrained(tiny_model.path, num_labels=1).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    tokenizer.save_pretrained(folder)

    reward = RewardModelReward(RewardModelOptions(path=folder, batch_size=2))
    prompts, completions = ["Hi", "Name a star.", "Hi"], ["Hello there", "The sun.", "No"]
    scores = reward(prompts, completions)
    assert reward.texts(["Hi"], ["Hello there"]) == [
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello there<|im_end|>\n"]
    # the same numbers, one pair at a time, straight from the model's head
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    for text, score in zip(reward.texts(prompts, completions), scores, strict=True):
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            assert model(**ids).logits[0, 0].item() == pytest.approx(score, abs=1e-5)
    assert scores[0] != scores[2]

    plain = RewardModelReward(RewardModelOptions(path=folder, chat_template=False))
    plain._load()
    assert plain.texts(["Q: "], ["A"]) == ["Q: A<|im_end|>"]
    with pytest.raises(UserError, match="not a model folder"):
        RewardModelReward(RewardModelOptions(path=tmp_path / "missing"))(["p"], ["c"])


def test_messages_reach_rewards_as_their_text():
    assert message_text("plain") == "plain"
    assert message_text([{"role": "assistant", "content": "Hello"}]) == "Hello"
    assert message_text([{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Hi"}]) == "Be brief.\n\nHi"


# -- option and data errors --------------------------------------------------------------


@pytest.mark.parametrize("tuner", [GRPOTuner, PPOTuner])
def test_unknown_reward_is_a_user_error_naming_the_option(tmp_path, tiny_model, tuner):
    name = "grpo" if tuner is GRPOTuner else "ppo"
    job = _job(tiny_model, tmp_path, [{"prompt": p} for p in PROMPTS])
    with pytest.raises(UserError, match=rf"^{name} option 'reward': unknown reward 'nope'; "
                                        r"known: contains, length, reward-model$"):
        tuner(tuner.Options(reward="nope", steps=1)).tune(job)
    with pytest.raises(UserError, match=rf"{name} option 'reward_options' field 'target_words' "
                                        r"\(reward 'length'\): Input should be greater than 0"):
        tuner(tuner.Options(reward="length", reward_options={"target_words": 0}, steps=1)).tune(job)
    with pytest.raises(UserError, match=r"field 'colour' \(reward 'contains'\): Extra inputs"):
        tuner(tuner.Options(reward="contains", reward_options={"pattern": "a", "colour": 1},
                            steps=1)).tune(job)


def test_options_that_cannot_form_batches_are_rejected():
    with pytest.raises(ValidationError, match="must be a multiple of num_generations"):
        GRPOOptions(batch_size=6, num_generations=4)


def test_grpo_refuses_an_adapter_on_lm_head_when_the_suite_is_validated():
    # trl's GRPOTrainer raises only once the model is loaded (see the module docstring)
    for modules in (["q_proj", "lm_head"], "lm_head"):
        with pytest.raises(ValidationError,
                           match=r"target_modules\n.*'lm_head' cannot carry the adapter"):
            GRPOOptions(target_modules=modules)
    assert GRPOOptions(target_modules=["q_proj", "v_proj"]).target_modules == ["q_proj", "v_proj"]
    assert GRPOOptions().target_modules == "all-linear"


# -- training raises the reward ------------------------------------------------------------


def test_grpo_raises_mean_reward(tmp_path, tiny_model, monkeypatch):
    from transformers import set_seed

    from harness_plugins.tuners import grpo, training

    # the output layer trained whole beside the adapter (see the module docstring); without
    # it the reward rose by 0.03 to 0.06 here, within the sampling noise
    monkeypatch.setattr(grpo, "lora_config", lambda options, **extra: training.lora_config(
        options, modules_to_save=["lm_head"], **extra))
    set_seed(0)
    job = _job(tiny_model, tmp_path, [{"prompt": p} for p in PROMPTS], "grpo")
    steps = []
    job.on_step = lambda step, total, loss: steps.append((step, total))
    options = GRPOOptions(reward="contains", reward_options={"pattern": "e"}, steps=20,
                          num_generations=4, **{**FAST, "target_modules": ["q_proj", "v_proj"]})
    result = GRPOTuner(options).tune(job)

    assert result.kind == "adapter" and (result.path / "adapter_model.safetensors").is_file()
    assert result.record.steps == 20 and steps[-1] == (20, 20)
    assert 0 < result.record.trainable_params < result.record.total_params
    log = json.loads((job.output_dir / "rl_log.json").read_text())
    assert len(log["steps"]) == 20 and "rewards/contains/mean" in log["steps"][0]

    reward = ContainsReward(ContainsOptions(pattern="e"))
    before, after = _base_and_tuned(tiny_model, result.path, reward)
    # measured here: 0.58 -> 1.00
    assert after > before + 0.1, (before, after)


# -- through a suite: the rewards reach the tuners from the plugin registry -----------------


def _host():
    """Built-ins plus these plugins, whether or not BUILTIN_PLUGINS lists them yet."""
    from harness.plugins import BUILTIN_PLUGINS, PluginHost

    needed = ["harness_plugins.rewards.rules", "harness_plugins.rewards.reward_model",
              "harness_plugins.tuners.grpo", "harness_plugins.tuners.ppo"]
    extra = [importlib.import_module(name) for name in needed if name not in BUILTIN_PLUGINS]
    return PluginHost.load(entry_points=False, extra_plugins=extra)


def test_suite_runs_grpo_and_ppo_with_registered_rewards(tmp_path, tiny_model):
    import duckdb
    from rich.console import Console

    from harness.runner import run_suite

    write_jsonl(tmp_path / "data" / "prompts.jsonl", [{"prompt": p} for p in PROMPTS[:4]])
    write_jsonl(tmp_path / "data" / "text.jsonl", TEXT_ROWS)
    (tmp_path / "suite.toml").write_text("""
[suite]
name = "rl"
store = "results/rl.duckdb"

[[models]]
name = "tiny"
source = "builtin:tiny-random"

[[tuners]]
name = "grpo-len"
method = "grpo"
data = "data/prompts.jsonl"
options = { steps = 2, batch_size = 4, num_generations = 2, max_completion_length = 4, reward = "length", reward_options = { target_words = 3 } }

[[tuners]]
name = "ppo-has-e"
method = "ppo"
data = "data/prompts.jsonl"
options = { steps = 2, batch_size = 4, max_completion_length = 4, num_ppo_epochs = 1, reward = "contains", reward_options = { pattern = "e" } }

[[evaluators]]
name = "text"
kind = "perplexity"
data = "data/text.jsonl"
""", encoding="utf-8")
    summary = run_suite(tmp_path / "suite.toml", host=_host(), show_progress=False,
                        console=Console(file=open(os.devnull, "w")))
    assert (summary.done, summary.failed) == (3, 0)
    con = duckdb.connect(str(tmp_path / "results" / "rl.duckdb"), read_only=True)
    variants = con.execute("SELECT name, method, status, kind, steps, len(loss_curve) FROM variants "
                           "ORDER BY name").fetchall()
    con.close()
    assert variants == [("grpo-len", "grpo", "done", "adapter", 2, 2),
                        ("ppo-has-e", "ppo", "done", "adapter", 2, 2)]
