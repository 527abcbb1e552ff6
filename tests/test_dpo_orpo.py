"""DPO and ORPO really learn the preference: chosen gains on rejected; bad rows stop before training."""

from __future__ import annotations

import json

import pytest
import torch

from harness import TuneJob
from harness.errors import DataError
from harness_plugins.tuners import dpo, orpo
from harness_plugins.tuners.dpo import DPOOptions, DPOTuner
from harness_plugins.tuners.orpo import ORPOOptions, ORPOTuner
from harness_plugins.tuners.training import run_trainer

from .conftest import write_jsonl

PAIRS = [
    {"prompt": prompt, "chosen": chosen, "rejected": "I refuse."}
    for prompt, chosen in [
        ("Name a colour.", "Blue."), ("Name a fruit.", "Apple."), ("Name an animal.", "A dog."),
        ("Name a day of the week.", "Monday."), ("Name a planet.", "Mars."),
        ("Name a country.", "France."), ("Name a drink.", "Water."), ("Name a number.", "Seven."),
        ("Name a city.", "Paris."), ("Name a tree.", "An oak."), ("Name a season.", "Summer."),
        ("Name a metal.", "Iron."),
    ]
]
#: the same run for both tuners; a few seconds each on two CPU cores
TRAINING = dict(r=8, alpha=16, steps=16, lr=1e-2, batch_size=4, max_length=64)


def _completion_logprob(model, tokenizer, prompt: str, completion: str) -> tuple[float, int]:
    """(sum of log p(completion tokens | prompt), their number), with the chat template."""
    turns = [{"role": "user", "content": prompt}]
    prompt_ids = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(turns + [{"role": "assistant", "content": completion}],
                                             tokenize=True, return_dict=True)["input_ids"]
    assert full_ids[:len(prompt_ids)] == prompt_ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full_ids])).logits[0, :-1].double()
    logprobs = torch.log_softmax(logits, -1)
    positions = range(len(prompt_ids), len(full_ids))
    total = sum(logprobs[position - 1, full_ids[position]].item() for position in positions)
    return total, len(positions)


def _scores(model, tokenizer) -> tuple[float, float]:
    """(mean over pairs of log p(chosen) - log p(rejected), mean NLL per token of the chosen answers)."""
    margins, chosen_logprob, chosen_tokens = [], 0.0, 0
    for pair in PAIRS:
        chosen, count = _completion_logprob(model, tokenizer, pair["prompt"], pair["chosen"])
        rejected, _ = _completion_logprob(model, tokenizer, pair["prompt"], pair["rejected"])
        margins.append(chosen - rejected)
        chosen_logprob += chosen
        chosen_tokens += count
    return sum(margins) / len(margins), -chosen_logprob / chosen_tokens


def _scores_before_and_after(tiny_model, adapter) -> tuple[tuple[float, float], tuple[float, float]]:
    """Margin and chosen NLL of the base, then of a fresh base with the saved adapter applied."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    base = AutoModelForCausalLM.from_pretrained(tiny_model.path).eval()
    before = _scores(base, tokenizer)
    tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
    return before, _scores(tuned, tokenizer)


def _tune(tuner, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", PAIRS)
    out = tmp_path / "out"
    out.mkdir()
    steps = []
    result = tuner.tune(TuneJob(tiny_model, "pref", data, out, seed=0,
                                on_step=lambda step, total, loss: steps.append((step, total))))
    assert result.kind == "adapter"
    assert (result.path / "adapter_model.safetensors").is_file()
    assert not list(result.path.glob("*.bin"))
    assert json.loads((result.path / "adapter_config.json").read_text())["r"] == TRAINING["r"]
    record = result.record
    assert record.steps == TRAINING["steps"] and len(record.loss_curve) == TRAINING["steps"]
    assert steps[-1] == (TRAINING["steps"], TRAINING["steps"])
    assert 0 < record.trainable_params < record.total_params
    assert record.train_tokens > 0 and record.seconds > 0
    return result


def test_dpo_raises_the_chosen_over_rejected_margin(tmp_path, tiny_model, monkeypatch):
    seen = {}

    def spy(trainer, *args):
        # the reference is the base with the adapter switched off: no second model, no "ref" adapter
        seen["ref_model"], seen["adapters"] = trainer.ref_model, list(trainer.model.peft_config)
        return run_trainer(trainer, *args)

    monkeypatch.setattr(dpo, "run_trainer", spy)
    result = _tune(DPOTuner(DPOOptions(**TRAINING)), tiny_model, tmp_path)
    assert seen == {"ref_model": None, "adapters": ["default"]}
    # the sigmoid loss starts at log 2: policy and reference are the same function at step 0
    assert result.record.loss_curve[0] == pytest.approx(0.6931, abs=1e-3)
    assert result.record.loss_curve[-1] < 0.6 * result.record.loss_curve[0]
    (margin_before, _), (margin_after, _) = _scores_before_and_after(tiny_model, result.path)
    # measured here: +12.8 to +13.3 nats (15.5 -> 28.3..28.9), depending on the LoRA init
    assert margin_after > margin_before + 5.0, (margin_before, margin_after)


def test_orpo_raises_the_margin_and_lowers_the_chosen_nll(tmp_path, tiny_model):
    # beta (ORPO's lambda) 1.0 rather than trl's 0.1: with 0.1 the odds-ratio term is too weak
    # to move the margin clearly in 16 steps (measured here: +1.4 nats, and +0.4 with beta ~ 0,
    # i.e. the SFT term alone); with 1.0, +8.2 to +8.7
    result = _tune(ORPOTuner(ORPOOptions(beta=1.0, **TRAINING)), tiny_model, tmp_path)
    assert result.record.loss_curve[-1] < result.record.loss_curve[0]
    (margin_before, nll_before), (margin_after, nll_after) = _scores_before_and_after(tiny_model,
                                                                                      result.path)
    assert margin_after > margin_before + 4.0, (margin_before, margin_after)
    # the SFT half of the loss: measured here about 6.24 -> 5.64 nats per token
    assert nll_after < nll_before - 0.3, (nll_before, nll_after)


def _no_model(job, **kwargs):
    raise AssertionError("the model was loaded although a data row is bad")


@pytest.mark.parametrize("module, tuner", [(dpo, DPOTuner(DPOOptions(steps=1))),
                                           (orpo, ORPOTuner(ORPOOptions(steps=1)))],
                         ids=["dpo", "orpo"])
@pytest.mark.parametrize("bad, expected", [
    ({"prompt": "Name a colour.", "chosen": "Blue."},
     r"prefs.jsonl:3: field 'rejected': Field required"),
    ({"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Blue."},
     r"prefs.jsonl:3: 'chosen' and 'rejected' are the same"),
    ({"prompt": "Name a colour.", "chosen": [{"role": "user", "content": "Blue."}], "rejected": "No."},
     r"prefs.jsonl:3: 'chosen' messages must all be assistant messages"),
], ids=["missing-rejected", "chosen-equals-rejected", "chosen-not-assistant"])
def test_bad_preference_row_names_file_line_and_field_before_training(tmp_path, tiny_model, monkeypatch,
                                                                      module, tuner, bad, expected):
    monkeypatch.setattr(module, "load_model_for", _no_model)
    data = write_jsonl(tmp_path / "prefs.jsonl", PAIRS[:2] + [bad])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match=expected):
        tuner.tune(TuneJob(tiny_model, "pref", data, out, seed=0))
    assert list(out.iterdir()) == []


def _tokenized_by_orpo(tiny_model, tmp_path, monkeypatch, rows, max_length):
    """ORPO's tokenized training rows (the trainer is built, nothing is trained)."""
    seen = {}

    def stop(trainer, *args):
        seen["dataset"] = trainer.train_dataset
        return None

    monkeypatch.setattr(orpo, "run_trainer", stop)
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    out = tmp_path / "out"
    out.mkdir()
    options = ORPOOptions(steps=1, max_length=max_length)
    ORPOTuner(options).tune(TuneJob(tiny_model, "pref", data, out, seed=0))
    return seen["dataset"]


def test_orpo_keeps_sequences_within_max_length(tmp_path, tiny_model, monkeypatch):
    # trl 1.12 alone ran the chosen sequence past max_length and cut the short rejected
    # answer to nothing (to max_length minus the longer answer's length); trl 1.16 cuts
    # each answer to what fits after its prompt, and the harness relies on that
    long_answer = "The river runs through the old town and into the sea. " * 3
    rows = [{"prompt": "Name a river.", "chosen": long_answer, "rejected": "No."}] * 4
    dataset = _tokenized_by_orpo(tiny_model, tmp_path, monkeypatch, rows, max_length=48)
    row = dataset[0]
    assert len(row["chosen_input_ids"]) == 48
    assert len(row["rejected_input_ids"]) <= 48
    assert row["rejected_labels"][-1] != -100 and row["chosen_labels"][-1] != -100


@pytest.mark.parametrize("module, tuner", [(dpo, DPOTuner), (orpo, ORPOTuner)], ids=["dpo", "orpo"])
def test_prompt_that_fills_max_length_names_its_line(tmp_path, tiny_model, monkeypatch, module, tuner):
    # trl alone (1.12 and 1.16): DPO drops such a row without a word; ORPO keeps it with an
    # empty answer (1.16 logs a warning once)
    monkeypatch.setattr(module, "run_trainer", _no_training)
    rows = PAIRS[:2] + [{"prompt": "Tell me about the river and the old town. " * 6, "chosen": "Yes.",
                         "rejected": "No."}] + PAIRS[2:4]
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    out = tmp_path / "out"
    out.mkdir()
    expected = r"prefs.jsonl:3: field 'prompt': the prompt fills max_length=24"
    with pytest.raises(DataError, match=expected):
        tuner(tuner.Options(steps=1, max_length=24)).tune(TuneJob(tiny_model, "pref", data, out,
                                                                  seed=0))


def _no_training(*args):
    raise AssertionError("training started although a row cannot be trained on")


def test_dpo_loss_types_are_the_ones_trl_lists():
    import re
    import typing

    from trl import DPOConfig

    listed = re.findall(r"`'(\w+)'`", DPOConfig.__dataclass_fields__["loss_type"].metadata["help"])
    assert sorted(typing.get_args(dpo.DPOLoss)) == sorted(listed)


def test_dpo_options_follow_trl():
    assert DPOOptions().beta == 0.1 and DPOOptions().loss_type == "sigmoid"
    assert DPOOptions(loss_type=["sigmoid", "sft"]).loss_type == ["sigmoid", "sft"]
    with pytest.raises(ValueError, match="loss_type"):
        DPOOptions(loss_type="kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOOptions(loss_type="exo_pair")
    assert DPOOptions(loss_type="exo_pair", label_smoothing=1e-3).label_smoothing == 1e-3
    assert ORPOOptions().beta == 0.1
    with pytest.raises(ValueError, match="(?i)extra"):
        ORPOOptions(loss_type="sigmoid")
    # trl's DPOTrainer (from 1.16) reads lm_head's weight directly and refuses an adapter there
    with pytest.raises(ValueError, match=r"target_modules\n.*'lm_head' cannot carry the adapter"):
        DPOOptions(target_modules=["q_proj", "lm_head"])


def test_orpo_trains_an_adapter_on_lm_head(tmp_path, tiny_model):
    from safetensors.torch import load_file

    # trl's ORPO computes its log-probabilities from the model's logits, through the adapter
    data = write_jsonl(tmp_path / "prefs.jsonl", PAIRS)
    out = tmp_path / "out"
    out.mkdir()
    options = ORPOOptions(target_modules=["lm_head"], steps=2, lr=1e-2, batch_size=4,
                          max_length=64)
    result = ORPOTuner(options).tune(TuneJob(tiny_model, "pref", data, out, seed=0))
    tensors = load_file(result.path / "adapter_model.safetensors")
    assert {"base_model.model.lm_head.lora_A.weight",
            "base_model.model.lm_head.lora_B.weight"} <= set(tensors)
    assert tensors["base_model.model.lm_head.lora_B.weight"].abs().max() > 0  # it trained


def test_each_module_registers_its_tuner():
    registered = {}
    for module in (dpo, orpo):
        module.harness_register_tuners(lambda name, component: registered.setdefault(name, component))
    assert registered == {"dpo": DPOTuner, "orpo": ORPOTuner}
