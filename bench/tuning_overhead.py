"""Tuning overhead: the harness's `lora` tuner against a plain peft + AdamW loop.

    python bench/tuning_overhead.py [--steps 12] [--repeats 3] [--out FILE]

Both train SmolLM2-135M-Instruct with the same LoRA (r 8, alpha 16, all linear
layers, no dropout), AdamW at lr 2e-4, batch 4, max length 128, on the quickstart's
SFT data rendered with the model's chat template, loss on the answer tokens only.
The harness side is the `lora` tuner's `tune()` (trl's SFTTrainer underneath, with the
harness's bookkeeping); a third arm is trl's SFTTrainer used directly with the same
settings (no harness), which splits the overhead into trl's and the harness's own; the
plain side is the loop a user would write by hand: tokenise, shuffle, pad each batch,
forward, backward, step.

Each run is a fresh process; the two alternate, `--repeats` times. A run's step time
is the median over its steps after the first (kernel and allocator warm-up); the
reported figure is the median over runs, with the mean tokens per step so that batch
lengths can be compared (each side shuffles the same rows with its own generator).
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
path = builtin_model_path("smollm2-135m-instruct")
"""

HARNESS = PRELUDE + r"""
from pathlib import Path
from harness import ResolvedModel, TuneJob
from harness_plugins.tuners.lora import LoraTuner
model = ResolvedModel("smollm2", "builtin:smollm2-135m-instruct", path, "bench")
options = LoraTuner.Options(steps=steps, batch_size=4, max_length=128, lr=2e-4)
stamps = []
job = TuneJob(model, "lora", Path(data), Path(out), seed=0,
              on_step=lambda s, t, l: stamps.append(time.perf_counter()))
result = LoraTuner(options).tune(job)
durations = [b - a for a, b in zip(stamps, stamps[1:])]
print(json.dumps({"step_seconds": statistics.median(durations),
                  "tokens_per_step": result.record.train_tokens / result.record.steps,
                  "peak_memory_mb": result.record.peak_memory_mb}))
"""

TRL = PRELUDE + r"""
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer
rows = [{"messages": json.loads(line)["messages"]} for line in open(data, encoding="utf-8")]
stamps = []

class Stamp(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        stamps.append(time.perf_counter())

trainer = SFTTrainer(
    model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
    args=SFTConfig(output_dir=out, max_steps=steps, learning_rate=2e-4,
                   per_device_train_batch_size=4, max_length=128, completion_only_loss=True,
                   logging_steps=1, save_strategy="no", report_to="none", seed=0,
                   use_cpu=True, disable_tqdm=True),
    train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(path),
    peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                           task_type="CAUSAL_LM"),
    callbacks=[Stamp()])
trainer.train()
durations = [b - a for a, b in zip(stamps, stamps[1:])]
print(json.dumps({"step_seconds": statistics.median(durations),
                  "tokens_per_step": trainer._total_train_tokens / steps}))
"""

PLAIN = PRELUDE + r"""
import random
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
random.Random(0).shuffle(examples)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4,
                              weight_decay=0.0)
durations, tokens = [], []
for step in range(steps):
    batch = [examples[(step * 4 + i) % len(examples)] for i in range(4)]
    clock = time.perf_counter()
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
    durations.append(time.perf_counter() - clock)
    tokens.append(int(mask.sum()))
print(json.dumps({"step_seconds": statistics.median(durations[1:]),
                  "tokens_per_step": sum(tokens) / len(tokens)}))
"""


def run(code: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-c", code, str(steps), str(DATA), tmp],
                              capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "tuning_overhead.json")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"harness": [], "trl": [], "plain": []}
    for _ in range(args.repeats):
        for label, code in (("harness", HARNESS), ("trl", TRL), ("plain", PLAIN)):
            runs[label].append(run(code, args.steps))
            print(label, runs[label][-1], flush=True)
    median = {label: statistics.median(r["step_seconds"] for r in values)
              for label, values in runs.items()}
    tokens = {label: statistics.mean(r["tokens_per_step"] for r in values)
              for label, values in runs.items()}
    import peft
    import torch
    import transformers
    import trl

    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "peft": peft.__version__, "trl": trl.__version__},
              "steps": args.steps, "runs": runs, "median_step_seconds": median,
              "mean_tokens_per_step": tokens, "ratio": median["harness"] / median["plain"],
              "ratio_to_trl": median["harness"] / median["trl"],
              "trl_to_plain": median["trl"] / median["plain"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"seconds per step: harness {median['harness']:.3f}, trl {median['trl']:.3f}, plain "
          f"{median['plain']:.3f}; harness / plain {report['ratio']:.3f}, harness / trl "
          f"{report['ratio_to_trl']:.3f}, trl / plain {report['trl_to_plain']:.3f}; tokens per "
          f"step {tokens['harness']:.0f} / {tokens['trl']:.0f} / {tokens['plain']:.0f}")


if __name__ == "__main__":
    main()
