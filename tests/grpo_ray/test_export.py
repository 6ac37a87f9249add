"""Export: a LoRA run merged into a plain checkpoint gives the adapted model's logits; GGUF goes
through llama.cpp's converter when there is one."""

from __future__ import annotations


import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from grpo_ray.config import ExportConfig
from grpo_ray.export import export_gguf, export_merged, load_trained
from grpo_ray.startup import find_gguf_converter
from recipes.tiny_model import build_char_tokenizer, build_tiny_model, save_checkpoint


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A saved LoRA adapter with non-zero B (as after training) over a saved tiny base."""
    root = tmp_path_factory.mktemp("lora")
    tokenizer = build_char_tokenizer("0123456789+=ab")
    base = save_checkpoint(build_tiny_model(tokenizer, hidden_size=32, seed=0), tokenizer, root / "base")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(root / "final")
    tokenizer.save_pretrained(root / "final")
    return root, tokenizer


IDS = torch.tensor([[3, 5, 9, 12, 4, 7, 6]])


def logits(model):
    with torch.no_grad():
        return model(IDS).logits.float()


def test_merged_lora_export_gives_the_adapted_logits(adapter):
    root, tokenizer = adapter
    want = logits(load_trained(root / "final"))
    base = logits(AutoModelForCausalLM.from_pretrained(root / "base"))
    assert (want - base).abs().max() > 0.1  # the adapter matters
    exact = AutoModelForCausalLM.from_pretrained(export_merged(root / "final", root / "m32", "float32", tokenizer))
    assert not hasattr(exact, "peft_config")
    torch.testing.assert_close(logits(exact), want, atol=1e-5, rtol=1e-5)
    half = AutoModelForCausalLM.from_pretrained(export_merged(root / "final", root / "m16", "bfloat16", tokenizer))
    assert half.dtype == torch.bfloat16
    assert (logits(half) - want).abs().max() < 0.05 * want.abs().max()
    assert (root / "m16" / "tokenizer.json").is_file()


FAKE_CONVERTER = """
import sys, pathlib
args = sys.argv[1:]
out = pathlib.Path(args[args.index("--outfile") + 1])
out.write_text("GGUF " + args[0] + " " + args[args.index("--outtype") + 1])
"""


def test_gguf_goes_through_the_llama_cpp_converter(adapter, tmp_path, monkeypatch):
    (tmp_path / "convert_hf_to_gguf.py").write_text(FAKE_CONVERTER)  # stands in for llama.cpp's script
    converter = find_gguf_converter(ExportConfig(gguf="q8_0", llama_cpp=str(tmp_path)))
    assert converter == tmp_path / "convert_hf_to_gguf.py"
    out = export_gguf(adapter[0] / "base", tmp_path / "model.gguf", "q8_0", converter)
    assert out.read_text() == f"GGUF {adapter[0] / 'base'} q8_0"
    (tmp_path / "convert_hf_to_gguf.py").write_text("import sys; print('unsupported model'); sys.exit(1)")
    with pytest.raises(RuntimeError, match="unsupported model"):
        export_gguf(adapter[0] / "base", tmp_path / "other.gguf", "q8_0", converter)


def test_no_converter_is_found_where_there_is_none(tmp_path, monkeypatch):
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_gguf_converter(ExportConfig(gguf="f16")) is None
    assert find_gguf_converter(ExportConfig(gguf="f16", llama_cpp=str(tmp_path))) is None
