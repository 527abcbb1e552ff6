"""The SFT tuners' leaner loss (logits only where the loss is taken, no trl per-step
metrics) trains as trl's own SFTTrainer does, and records everything it did.

The reference is trl's stock ``SFTTrainer``, built by ``train_sft`` from the same
arguments (``loss_type="nll"``, trl's default) in the same process. Since trl 1.16 the
two agree to float32 rounding, not bit for bit: trl scores the tokens with its fused LM
head, which sums log-probabilities over vocabulary tiles in another order than the
model's own cross-entropy does. So the test compares what the loss defines, the
gradients of the first step, tightly, and the whole run within what three Adam steps
make of that rounding. Timing is not tested here: ``bench/tuning_overhead.py`` measures it.
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


def _tune_keeping_first_gradients(tmp_path, tiny_model, monkeypatch, tuner: str, name: str):
    """The tuner's result, and each trained parameter's gradient in the first optimiser
    step (as the optimiser sees it, after transformers' clipping to norm 1)."""
    from transformers import TrainerCallback

    gradients = {}

    class FirstGradients(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if state.global_step == 0:
                gradients.update({name: p.grad.detach().clone()
                                  for name, p in model.named_parameters() if p.grad is not None})

    plain_run = training.run_trainer

    def run_keeping_gradients(trainer, *args):
        trainer.add_callback(FirstGradients())
        return plain_run(trainer, *args)

    monkeypatch.setattr(training, "run_trainer", run_keeping_gradients)
    return _tune(tmp_path, tiny_model, tuner, name), gradients


def _weights(result):
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if result.kind == "adapter" else "model.safetensors"
    return load_file(result.path / name)


@pytest.mark.parametrize("tuner", sorted(TUNERS))
def test_gradients_loss_curve_weights_and_record_are_those_of_trl_s_own_trainer(
        tmp_path, tiny_model, monkeypatch, tuner):
    import torch
    from trl import SFTTrainer

    with monkeypatch.context() as patch:
        lean, lean_gradients = _tune_keeping_first_gradients(tmp_path, tiny_model, patch, tuner,
                                                             "lean")
    with monkeypatch.context() as patch:
        patch.setattr(training, "completion_sft_trainer", lambda: SFTTrainer)
        stock, gradients = _tune_keeping_first_gradients(tmp_path, tiny_model, patch, tuner,
                                                         "stock")

    # the same loss over the same tokens: each parameter's first gradient is trl's up to
    # rounding, a difference under 1e-4 of its norm (measured: 2e-7; 2e-5 for QLoRA, whose
    # 4-bit layers pass the rounding on less evenly); a loss over other tokens points it
    # elsewhere. Clipping would hide a scale, so the loss values below check normalisation.
    assert lean_gradients.keys() == gradients.keys() and gradients
    for name, reference in gradients.items():
        difference = (lean_gradients[name] - reference).norm()
        assert difference <= 1e-4 * reference.norm(), name
    # each loss within 1e-5 of trl's (measured: at most 2e-6), the first one on the same
    # weights; and each trained weight within a tenth of the learning rate, about the most
    # one Adam step moves a weight (measured: 5e-2 of it for QLoRA, below 5e-3 otherwise)
    assert lean.record.loss_curve == pytest.approx(stock.record.loss_curve, rel=1e-5, abs=0)
    weights, reference = _weights(lean), _weights(stock)
    lr = TUNERS[tuner]().options.lr
    assert weights.keys() == reference.keys()
    for name in reference:
        assert (weights[name] - reference[name]).abs().max() <= 0.1 * lr, name
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
