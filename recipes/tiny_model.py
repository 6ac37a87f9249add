"""Small causal LMs and tokenizers made on the spot, saved like a real checkpoint.

No hub is reachable here, so recipes and tests build their model from a config and write it
with ``save_pretrained``; everything downstream loads it back with ``from_pretrained``, the
same code path a real checkpoint takes. Tokenizers: one token per character (arith), made-up
words (random-weight benchmarks), and a byte-level BPE trained on given texts with Qwen2.5's
special tokens and ChatML chat template (the GSM8K recipe's ``--tiny``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from typing import Iterable

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}

#: Qwen2.5's chat template without its default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _word_level(tokens: list[str], pre_tokenizer: Any, decoder: Any = None) -> PreTrainedTokenizerFast:
    """A fixed-vocabulary tokenizer: pad/bos/eos/unk, then ``tokens``, split by ``pre_tokenizer``."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for tok in tokens:
        vocab.setdefault(tok, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    core.pre_tokenizer = pre_tokenizer
    if decoder is not None:
        core.decoder = decoder
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=SPECIAL_TOKENS["pad"],
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        padding_side="left",
    )


def build_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """A byte-level BPE (Qwen2.5's kind) trained on ``texts``, with Qwen2.5's special tokens
    (``<|endoftext|>`` pads, ``<|im_end|>`` ends a turn) and the ChatML chat template."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        chat_template=CHATML_TEMPLATE,
        padding_side="left",
    )


def build_char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """One token per character of ``alphabet``, plus pad/bos/eos/unk."""
    return _word_level(sorted(set(alphabet)), pre_tokenizers.Split(Regex("."), behavior="isolated"), decoders.Fuse())


def build_word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A tokenizer of ``vocab_size`` made-up words ``w0 w1 ...`` (plus pad/bos/eos/unk), for
    random-weight models of real shapes: every id a model can sample decodes to something."""
    return _word_level([f"w{i}" for i in range(vocab_size - len(SPECIAL_TOKENS))], pre_tokenizers.WhitespaceSplit())


# Shapes of real checkpoints (their config.json), for random-weight benchmarks where no weights can be fetched.
QWEN25_SHAPES = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "small": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False),
}


def random_checkpoint(
    shape: str, path: str | Path, *, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """A random-weight Qwen2 model of a real shape and a word tokenizer of its vocabulary, on disk;
    given a ``tokenizer``, the model's vocabulary is that tokenizer's."""
    torch.manual_seed(seed)
    if tokenizer is None:
        tokenizer = build_word_tokenizer(QWEN25_SHAPES[shape]["vocab_size"])
    config = Qwen2Config(
        **(QWEN25_SHAPES[shape] | {"vocab_size": len(tokenizer)}),
        max_position_embeddings=4096,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    return save_checkpoint(model, tokenizer, path)


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 64,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A Qwen2-architecture model with random weights (same module names as the real ones)."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return Qwen2ForCausalLM(config)


def save_checkpoint(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, path: str | Path) -> Path:
    """Write model and tokenizer as a checkpoint directory ``from_pretrained`` can read."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
