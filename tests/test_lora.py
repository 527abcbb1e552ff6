"""The LoRA tuner really trains: completion loss on its data falls, only the adapter is saved."""

from __future__ import annotations

import json

import pytest
from harness import TuneJob
from harness.errors import DataError
from harness_plugins.tuners.lora import LoraOptions, LoraTuner

from .conftest import SFT_ROWS, completion_nll, write_jsonl


def test_lora_lowers_completion_loss_on_its_data(tmp_path, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_jsonl(tmp_path / "sft.jsonl", SFT_ROWS)
    out = tmp_path / "out"
    out.mkdir()
    options = LoraOptions(r=4, alpha=8, steps=12, lr=1e-2, batch_size=4, max_length=64)
    steps = []
    result = LoraTuner(options).tune(TuneJob(tiny_model, "lora", data, out, seed=0,
                                             on_step=lambda s, t, l: steps.append((s, t))))

    assert result.kind == "adapter"
    assert (result.path / "adapter_model.safetensors").is_file()
    assert not list(result.path.glob("*.bin"))
    assert json.loads((result.path / "adapter_config.json").read_text())["r"] == 4
    record = result.record
    assert record.steps == 12 and len(record.loss_curve) == 12
    assert steps[-1] == (12, 12)
    assert 0 < record.trainable_params < record.total_params

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    base = AutoModelForCausalLM.from_pretrained(tiny_model.path).eval()
    before = completion_nll(base, tokenizer, SFT_ROWS)
    tuned = PeftModel.from_pretrained(base, str(result.path)).eval()
    after = completion_nll(tuned, tokenizer, SFT_ROWS)
    assert after < before - 0.5, (before, after)


def test_bad_training_row_names_file_line_and_field(tmp_path, tiny_model):
    rows = SFT_ROWS[:2] + [{"messages": [{"role": "user", "content": "hi"},
                                         {"role": "robot", "content": "x"}]}]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match=r"sft.jsonl:3: field 'messages.1.role': Input should be"):
        LoraTuner(LoraOptions(steps=1)).tune(TuneJob(tiny_model, "lora", data, out, seed=0))
