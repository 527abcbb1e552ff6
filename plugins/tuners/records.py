"""Training bookkeeping shared by every tuner: loss curve, tokens, time, memory, parameters."""

from __future__ import annotations

import threading
import time
from typing import Any

from harness import TrainingRecord


class PeakMemory:
    """Peak memory while training: CUDA's own counter on GPUs, sampled RSS on CPU.

    On CPU the figure is the process's resident set (model, optimiser, data
    and the Python runtime together), sampled every 50 ms.
    """

    def __init__(self) -> None:
        import psutil
        import torch

        self._cuda = torch.cuda.is_available()
        self._process = psutil.Process()
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self._cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            self._peak = self._process.memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def megabytes(self) -> float:
        if self._cuda:
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
        return max(self._peak, self._process.memory_info().rss) / 2**20


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = total = 0
    for parameter in model.parameters():
        n = parameter.numel()
        total += n
        if parameter.requires_grad:
            trainable += n
    return trainable, total


def record_callback(on_step):
    """A transformers ``TrainerCallback`` that keeps the loss curve and token count."""
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.losses: list[float] = []
            self.tokens = 0
            self.started = time.perf_counter()
            self.seconds = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))
                on_step(state.global_step, state.max_steps, float(logs["loss"]))

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.started
            self.tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)

    return Recorder()


def training_record(recorder: Any, steps: int, memory: PeakMemory, model: Any,
                    trainable: int, total: int) -> TrainingRecord:
    return TrainingRecord(
        steps=steps, loss_curve=recorder.losses, seconds=recorder.seconds,
        train_tokens=recorder.tokens, peak_memory_mb=memory.megabytes,
        trainable_params=trainable, total_params=total,
    )


def quiet_trainer(trainer: Any) -> None:
    """Drop the Trainer's own printing; harness shows one progress bar of its own."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
