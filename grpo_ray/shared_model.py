"""A transformers causal LM built on tensors that already live elsewhere (no second copy).

Colocate mode builds the learner's model on the vLLM engine's weights: the model is made on
the ``meta`` device and every parameter is then bound to a given tensor (a view of the
engine's memory). A linear layer whose weight is given as :class:`Packed4bit` (the engine
loaded the base in 4-bit NF4 through bitsandbytes) becomes a bitsandbytes ``Linear4bit`` on
those same packed bytes and quantization statistics, so PEFT puts its 4-bit LoRA layer on it
(QLoRA, Dettmers et al. 2023, arXiv:2305.14314), as Unsloth shares a 4-bit base with vLLM.
No Ray, no vLLM here: the tensors could come from anywhere.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch


class Packed4bit(NamedTuple):
    """One linear layer's NF4 weight as bitsandbytes stores it: packed bytes ``[out*in/2, 1]``
    (uint8) and the ``QuantState`` (block absmax, code, original ``[out, in]`` shape)."""

    data: torch.Tensor
    quant_state: Any


def _linear4bit(linear: torch.nn.Linear, packed: Packed4bit, compute_dtype: torch.dtype) -> torch.nn.Module:
    """A bitsandbytes ``Linear4bit`` in place of ``linear`` (on meta), its weight the packed bytes."""
    import bitsandbytes as bnb

    shape = tuple(packed.quant_state.shape)
    if shape != (linear.out_features, linear.in_features):
        raise RuntimeError(f"a 4-bit weight of shape {shape} for a linear layer of {tuple(linear.weight.shape)}")
    with torch.device("meta"):
        layer = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=linear.bias is not None,
            compute_dtype=compute_dtype, quant_type=packed.quant_state.quant_type,
        )
    layer.weight = bnb.nn.Params4bit(
        data=packed.data, requires_grad=False, quant_state=packed.quant_state,
        quant_type=packed.quant_state.quant_type, blocksize=packed.quant_state.blocksize,
        compress_statistics=packed.quant_state.nested, bnb_quantized=True, module=layer,
    )
    return layer


def model_on_tensors(
    hf_config: Any, tensors: dict[str, torch.Tensor | Packed4bit], *, dtype: torch.dtype,
    trainable: bool, trust_remote_code: bool = False,
) -> torch.nn.Module:
    """The causal LM of ``hf_config`` whose every parameter is the tensor of its HF name in ``tensors``.

    ``trainable`` marks plain tensors as trainable (full fine-tuning); 4-bit weights never are.
    Tied embeddings are tied again; rotary buffers (computed at construction) are rebuilt on the
    tensors' device. Raises if a parameter has no tensor or something is left on ``meta``.
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, trust_remote_code=trust_remote_code)
    quantized = False
    for name, _ in list(model.named_parameters()):
        if name not in tensors:
            raise RuntimeError(f"no tensor given for the model's {name}")
        owner_path, leaf = name.rsplit(".", 1)
        owner = model.get_submodule(owner_path)
        tensor = tensors[name]
        if isinstance(tensor, Packed4bit):
            parent_path, _, child = owner_path.rpartition(".")
            setattr(model.get_submodule(parent_path), child, _linear4bit(owner, tensor, dtype))
            quantized = True
        else:
            setattr(owner, leaf, torch.nn.Parameter(tensor, requires_grad=trainable))
    if hf_config.tie_word_embeddings:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    device = next(t.data if isinstance(t, Packed4bit) else t for t in tensors.values()).device
    for name, module in list(model.named_modules()):
        if name.endswith("rotary_emb"):  # its buffers were computed on meta
            owner_path, leaf = name.rsplit(".", 1)
            with torch.device(device):
                setattr(model.get_submodule(owner_path), leaf, type(module)(config=hf_config))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"the model still has tensors without storage: {left[:3]}")
    if quantized:
        model.is_loaded_in_4bit = True  # what PEFT reads to wrap Linear4bit layers with its 4-bit LoRA layer
    return model
