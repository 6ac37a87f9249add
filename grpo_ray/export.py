"""Export after training: a merged 16-bit model for ``from_pretrained``/vLLM, and GGUF for llama.cpp.

The final checkpoint is a LoRA adapter (``adapter_config.json`` beside the weights, its base
named inside) or a full model. Merging folds ``scale * B @ A`` into each adapted weight and
saves a plain transformers checkpoint in the asked-for dtype, with the run's tokenizer (and so
its chat template). GGUF goes through llama.cpp's own ``convert_hf_to_gguf.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from grpo_ray.modeling import DTYPES


def load_trained(checkpoint: str | Path, dtype: str = "float32") -> Any:
    """The trained model of a final checkpoint: base + adapter for LoRA runs, else the model itself."""
    from transformers import AutoModelForCausalLM

    checkpoint = Path(checkpoint)
    if (checkpoint / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(checkpoint, dtype=DTYPES[dtype])
    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=DTYPES[dtype])


def export_merged(checkpoint: str | Path, out: str | Path, dtype: str, tokenizer: Any) -> Path:
    """Write the merged model of ``checkpoint`` at ``out`` in ``dtype``, with ``tokenizer``."""
    model = load_trained(checkpoint)  # merge in float32, cast once at the end
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model = model.to(DTYPES[dtype])
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def export_gguf(merged: str | Path, out_file: str | Path, outtype: str, converter: Path) -> Path:
    """Run llama.cpp's ``convert_hf_to_gguf.py`` on a merged checkpoint; raises with its output on failure."""
    cmd = [sys.executable, str(converter), str(merged), "--outfile", str(out_file), "--outtype", outtype]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not Path(out_file).is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"GGUF conversion failed ({' '.join(cmd)}): " + " / ".join(tail))
    return Path(out_file)
