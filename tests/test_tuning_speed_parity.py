"""The SFT tuners' leaner loss (logits only where the loss is taken, no trl per-step
metrics) trains exactly as trl's own SFTTrainer did, and records everything it did.

The reference is the code path before the change, run in the same process: trl's stock
``SFTTrainer`` with its default loss (``chunked_nll``), built by ``train_sft`` from the
same arguments. Timing is not tested here: ``bench/tuning_overhead.py`` measures it.
"""

from __future__ import annotations

import pytest

from harness import TuneJob
from harness_plugins.tuners import training
from harness_plugins.tuners.dora import DoraOptions, DoraTuner
from harness_plugins.tuners.full import FullOptions, FullTuner
from harness_plugins.tuners.lora import LoraOptions, LoraTuner
from harness_plugins.tuners.qlora import QLoraOptions, QLoraTuner

from .conftest import SFT_ROWS, write_jsonl

COMMON = dict(steps=3, batch_size=4, max_length=64)
TUNERS = {
    "lora": lambda: LoraTuner(LoraOptions(r=4, alpha=8, lr=1e-2, **COMMON)),
    "dora": lambda: DoraTuner(DoraOptions(r=4, alpha=8, lr=1e-2, **COMMON)),
    "full": lambda: FullTuner(FullOptions(lr=1e-3, **COMMON)),
    "qlora": lambda: QLoraTuner(QLoraOptions(r=4, alpha=8, lr=1e-2, **COMMON)),
}


def _tune(tmp_path, tiny_model, tuner: str, name: str, **job):
    import torch

    data = write_jsonl(tmp_path / "sft.jsonl", SFT_ROWS)
    out = tmp_path / name
    out.mkdir()
    torch.manual_seed(0)  # the adapter's initial weights, as the runner seeds before tuning
    return TUNERS[tuner]().tune(TuneJob(tiny_model, name, data, out, seed=0, **job))


def _stock_trl(monkeypatch):
    """``train_sft`` as it was: trl's SFTTrainer and its default loss."""
    from trl import SFTTrainer

    plain_args = training.trainer_args

    def args_with_trl_loss(*args, loss_type=None, **kwargs):
        return plain_args(*args, **kwargs)

    monkeypatch.setattr(training, "trainer_args", args_with_trl_loss)
    monkeypatch.setattr(training, "completion_sft_trainer", lambda: SFTTrainer)


def _weights(result):
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if result.kind == "adapter" else "model.safetensors"
    return load_file(result.path / name)


@pytest.mark.parametrize("tuner", sorted(TUNERS))
def test_loss_curve_weights_and_record_are_those_of_trl_s_own_trainer(
        tmp_path, tiny_model, monkeypatch, tuner):
    import torch

    lean = _tune(tmp_path, tiny_model, tuner, "lean")
    with monkeypatch.context() as patch:
        _stock_trl(patch)
        stock = _tune(tmp_path, tiny_model, tuner, "stock")

    # the same gradients every step: the trained weights are equal to the last bit; the
    # loss is summed over other rows in another order, so its value may differ in the last bit
    assert lean.record.loss_curve == pytest.approx(stock.record.loss_curve, rel=1e-6, abs=0)
    weights, reference = _weights(lean), _weights(stock)
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[name], reference[name]) for name in reference)
    for field in ("steps", "train_tokens", "trainable_params", "total_params"):
        assert getattr(lean.record, field) == getattr(stock.record, field), field


def test_the_output_layer_projects_only_positions_before_a_completion_token(
        tmp_path, tiny_model, monkeypatch):
    """The lm_head sees (batch x positions where some row's next token is a completion
    token) rows, not every position; every recorded field is still there."""
    import transformers

    projected, positions = [], []
    original = transformers.Trainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        head = model.get_base_model().get_output_embeddings()
        hook = head.register_forward_hook(
            lambda module, args, output: projected.append(args[0].shape[:2].numel()))
        try:
            positions.append(inputs["input_ids"].numel())
            return original(self, model, inputs, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(transformers.Trainer, "compute_loss", spy)
    steps = []
    result = _tune(tmp_path, tiny_model, "lora", "lean", save_every=2,
                   on_step=lambda step, total, loss: steps.append((step, total, loss)))

    assert len(projected) == len(positions) == 3
    assert all(0 < kept < every for kept, every in zip(projected, positions))
    record = result.record
    assert record.steps == 3 and len(record.loss_curve) == 3
    assert [s[:2] for s in steps] == [(1, 3), (2, 3), (3, 3)]
    assert [s[2] for s in steps] == record.loss_curve
    assert record.train_tokens == sum(positions)  # every input token, padding included
    assert record.seconds > 0 and record.peak_memory_mb > 0
    assert 0 < record.trainable_params < record.total_params
    assert list(result.checkpoints) == [2]
    assert (result.checkpoints[2] / "adapter_model.safetensors").is_file()
