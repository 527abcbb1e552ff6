"""Tuning overhead: the harness's `lora` tuner against a plain peft + AdamW loop.

    python bench/tuning_overhead.py [--steps 12] [--repeats 3] [--threads N] [--out FILE]

Both train SmolLM2-135M-Instruct with the same LoRA (r 8, alpha 16, all linear
layers, no dropout), AdamW at lr 2e-4, batch 4, max length 128, on the quickstart's
SFT data rendered with the model's chat template, loss on the answer tokens only.
The harness side is the `lora` tuner's `tune()` (trl's SFTTrainer underneath, with the
harness's bookkeeping and its leaner loss); a third arm is trl's SFTTrainer used
directly with the same settings (no harness: trl's default loss and per-step metrics,
and the harness's settings where trl's defaults differ: no gradient checkpointing, no
bf16, a constant learning rate), which splits the overhead into trl's and the
harness's own; the plain side is the loop a user would write by hand: tokenise,
shuffle, pad each batch to its longest row, forward, backward, step.

Every arm trains on the same batches: the plain loop shuffles with
`torch.randperm(n, generator=torch.Generator().manual_seed(0))`, which is the order
transformers' Trainer draws with `seed=0` in its first epoch, and tokenises as trl does,
so each step pads the same rows to the same width (each run reports its tokens per step
with padding, which must match, and without).

Each run is a fresh process; the arms alternate, `--repeats` times. A run's step time
is the median over its steps after the first (kernel and allocator warm-up), taken
between the ends of consecutive steps; the reported figure is the median over runs.
Each step is timed twice: wall-clock seconds, and the CPU seconds the process used
(`time.process_time`, every thread), which other work on a shared CPU inflates far
less. `--threads N` sets OMP_NUM_THREADS for every run: on a shared CPU, torch's
default of one thread per core can run several times slower than one thread (its
threads wait on each other), so compare arms there at `--threads 1`, where CPU
seconds are the work done.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "suites" / "data" / "task_sft.jsonl"

PRELUDE = r"""
import json, statistics, sys, time
import torch, transformers, peft, trl  # imported before any clock starts
from harness_plugins.sources.builtin import builtin_model_path
torch.manual_seed(0)
steps, data, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
losses, padded, real, walls, cpus = [], [], [], [], []
path = builtin_model_path("smollm2-135m-instruct")

def stamp():  # at the end of every step
    walls.append(time.perf_counter())
    cpus.append(time.process_time())

def report(**fields):
    wall = [b - a for a, b in zip(walls, walls[1:])]
    cpu = [b - a for a, b in zip(cpus, cpus[1:])]
    print(json.dumps({"step_seconds": statistics.median(wall),
                      "cpu_step_seconds": statistics.median(cpu), **fields}))
"""

HARNESS = PRELUDE + r"""
from pathlib import Path
from harness import ResolvedModel, TuneJob
from harness_plugins.tuners.lora import LoraTuner
model = ResolvedModel("smollm2", "builtin:smollm2-135m-instruct", path, "bench")
options = LoraTuner.Options(steps=steps, batch_size=4, max_length=128, lr=2e-4)
job = TuneJob(model, "lora", Path(data), Path(out), seed=0, on_step=lambda s, t, l: stamp())
result = LoraTuner(options).tune(job)
report(padded_tokens_per_step=result.record.train_tokens / result.record.steps,
       peak_memory_mb=result.record.peak_memory_mb, loss_curve=result.record.loss_curve)
"""

TRL = PRELUDE + r"""
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer
# prompt/completion rows, as the harness hands them to trl: the loss on the answers only
rows = [{"prompt": m[:-1], "completion": m[-1:]}
        for m in (json.loads(line)["messages"] for line in open(data, encoding="utf-8"))]

class Stamp(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        stamp()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            losses.append(float(logs["loss"]))

trainer = SFTTrainer(
    model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
    args=SFTConfig(output_dir=out, max_steps=steps, learning_rate=2e-4,
                   per_device_train_batch_size=4, max_length=128, completion_only_loss=True,
                   logging_steps=1, save_strategy="no", report_to="none", seed=0,
                   use_cpu=True, disable_tqdm=True, gradient_checkpointing=False, bf16=False,
                   lr_scheduler_type="constant", include_num_input_tokens_seen="all"),
    train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(path),
    peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                           task_type="CAUSAL_LM"),
    callbacks=[Stamp()])
trainer.train()
report(padded_tokens_per_step=trainer.state.num_input_tokens_seen / steps,
       tokens_per_step=trainer._total_train_tokens / steps, loss_curve=losses)
"""

PLAIN = PRELUDE + r"""
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                         target_modules="all-linear", task_type="CAUSAL_LM"))
model.train()
examples = []
for line in open(data, encoding="utf-8"):
    messages = json.loads(line)["messages"]
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=True, return_dict=True,
                                           add_generation_prompt=True)["input_ids"]
    full = full[:128]
    labels = [-100] * min(len(prompt), len(full)) + full[len(prompt):]
    examples.append((full, labels))
order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(0)).tolist()
examples = [examples[i] for i in order]
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4,
                              weight_decay=0.0)
for step in range(steps):
    batch = [examples[(step * 4 + i) % len(examples)] for i in range(4)]
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((4, width), tokenizer.pad_token_id or 0)
    labels = torch.full((4, width), -100)
    mask = torch.zeros((4, width), dtype=torch.long)
    for row, (ids, lab) in enumerate(batch):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(lab)] = torch.tensor(lab)
        mask[row, :len(ids)] = 1
    loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    losses.append(float(loss))
    stamp()
    real.append(int(mask.sum()))
    padded.append(mask.numel())
report(padded_tokens_per_step=sum(padded) / steps, tokens_per_step=sum(real) / steps,
       loss_curve=losses)
"""


def run(code: str, steps: int, threads: int | None) -> dict:
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-c", code, str(steps), str(DATA), tmp],
                              capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in every run (default: torch's, one per core)")
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "tuning_overhead.json")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"harness": [], "trl": [], "plain": []}
    for _ in range(args.repeats):
        for label, code in (("harness", HARNESS), ("trl", TRL), ("plain", PLAIN)):
            runs[label].append(run(code, args.steps, args.threads))
            print(label, {k: v for k, v in runs[label][-1].items() if k != "loss_curve"},
                  flush=True)
    median = {clock: {label: statistics.median(r[clock] for r in values)
                      for label, values in runs.items()}
              for clock in ("step_seconds", "cpu_step_seconds")}
    padded = {label: statistics.mean(r["padded_tokens_per_step"] for r in values)
              for label, values in runs.items()}
    tokens = {label: statistics.mean(r["tokens_per_step"] for r in values)
              for label, values in runs.items() if "tokens_per_step" in values[0]}
    import peft
    import torch
    import transformers
    import trl

    def ratios(clock: str) -> dict[str, float]:
        m = median[clock]
        return {"harness/plain": m["harness"] / m["plain"], "harness/trl": m["harness"] / m["trl"],
                "trl/plain": m["trl"] / m["plain"]}

    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "peft": peft.__version__, "trl": trl.__version__},
              "threads": args.threads, "steps": args.steps, "runs": runs,
              "median_step_seconds": median["step_seconds"],
              "median_cpu_step_seconds": median["cpu_step_seconds"],
              "mean_padded_tokens_per_step": padded, "mean_tokens_per_step": tokens,
              "ratios": ratios("step_seconds"), "cpu_ratios": ratios("cpu_step_seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for clock, name in (("step_seconds", "wall"), ("cpu_step_seconds", "CPU")):
        m, r = median[clock], ratios(clock)
        print(f"{name} seconds per step: harness {m['harness']:.3f}, trl {m['trl']:.3f}, plain "
              f"{m['plain']:.3f}; " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
    print(f"tokens per step with padding: harness {padded['harness']:.1f}, trl "
          f"{padded['trl']:.1f}, plain {padded['plain']:.1f}; without: trl {tokens['trl']:.1f}, "
          f"plain {tokens['plain']:.1f}")
    if len(set(padded.values())) > 1:
        print("warning: the arms' batches differ; the ratios do not compare equal work")

if __name__ == "__main__":
    main()
