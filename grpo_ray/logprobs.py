"""Per-token log-probabilities through the LM head without materialising ``[B, T, V]`` logits.

``token_logprobs(hidden, weight, token_ids)`` returns ``log softmax(hidden @ weight.T / tau)``
at ``token_ids``, ``[B, T]`` float32, computed chunk by chunk:

* forward: for each chunk of tokens and of the vocabulary, the logits tile is formed, folded
  into a running logsumexp (fp32) and the target logit picked out; only ``[B*T]`` floats
  (the logsumexp) are kept for backward.
* backward (a custom :class:`torch.autograd.Function`): with ``g = dL/dlogp``, per vocabulary
  chunk ``c`` and token chunk, the logits tile is recomputed and
  ``D = g / tau * (onehot(y) - softmax)`` formed, then ``grad_hidden += D @ W_c`` and, when the
  weight requires grad, ``grad_W_c += D.T @ hidden``. Peak extra memory is one ``[C, Vc]``
  chunk (plus the fp32 ``[B*T, H]`` grad_hidden accumulator), never ``[B*T, V]``.
  Tokens whose ``g`` is exactly 0 (padding under a mask) are skipped in backward.

Implementations (``impl``):

* ``"torch"``: the above in plain torch ops (any device, any float dtype; cuBLAS GEMMs plus
  unfused elementwise ops on each chunk).
* ``"triton"``: CUDA only; Triton kernels (``kernels/logprobs_triton.py``): the forward is
  one GEMM-with-online-softmax kernel over the whole batch (vocabulary split across
  programs, fp32 logits in registers); the backward forms ``D`` per chunk from an fp32 cuBLAS
  logits chunk in one fused Triton pass (or, in the kernels' "fused" backward mode, in a
  Triton GEMM's epilogue) and leaves the two gradient GEMMs to cuBLAS.
* ``"full"``: plain ``log_softmax(logits).gather`` on the whole ``[B, T, V]``; the reference.
* ``"auto"``: ``triton`` on CUDA when Triton imports and the dtype is fp16/bf16, else
  ``torch`` (fp32 included: the kernels' exact-fp32 dots do not use the tensor cores).

Precision: logsumexp, softmax and the returned logprobs are fp32 (float64 when the inputs
are float64, for gradient checks). The entropy (``with_entropy=True``) is returned detached:
it is a metric, not part of the loss.

The backward is first-order only (no double backward). Under ``torch.no_grad()`` (reference
and old-policy logprobs) nothing is saved for backward.

Chunk sizes: ``chunk_size`` tokens x ``vocab_chunk_size`` entries bound the logits chunk.
When all the tokens with a gradient fit in one token chunk, each ``grad_W`` slice is written
by one GEMM; otherwise an fp32 ``[Vc, H]`` accumulator is added per token chunk (extra
memory traffic). On an H100 at 16384 tokens, 16384 x 16384 chunks ran 137 ms against 148 ms
for the default 4096 x 8192, for 1.2 GiB more peak memory (BENCHMARKS.md).
"""

from __future__ import annotations

import functools

import torch
from torch.autograd.function import once_differentiable

IMPLS = ("auto", "torch", "triton", "full")
DEFAULT_CHUNK_SIZE = 4096  # tokens per chunk (ModelConfig.logprob_chunk_size)
DEFAULT_VOCAB_CHUNK_SIZE = 8192  # vocabulary entries per chunk


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when the Triton kernels import (Triton installed); does not check for a GPU."""
    try:
        import kernels.logprobs_triton  # noqa: F401
    except Exception:  # ImportError, or a broken Triton install
        return False
    return True


def resolve_impl(impl: str, device: torch.device, dtype: torch.dtype) -> str:
    """The implementation ``impl`` stands for on this device and dtype ('auto' resolved)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        # fp32 stays on torch: cuBLAS fp32 GEMMs beat the kernels' exact-fp32 (non tensor core) dots.
        ok = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
        return "triton" if ok and triton_available() else "torch"
    if impl == "triton":
        if device.type != "cuda":
            raise ValueError(f"impl='triton' needs CUDA tensors, got device {device}; use 'torch' or 'auto'")
        if not triton_available():
            raise ImportError("impl='triton' needs the triton package; use 'torch' or 'auto'")
    return impl


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --- reference ---------------------------------------------------------------------------------


def full_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0,
    with_entropy: bool = False,
):
    """The reference: full ``[..., V]`` logits (upcast to fp32), log_softmax, gather."""
    logits = (hidden @ weight.t()).to(_acc_dtype(hidden.dtype))
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logps = logp_all.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logps
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logps, entropy


# --- chunked torch forward / backward pieces ----------------------------------------------------


def _torch_forward(h, w, y, inv_t, chunk_size, vocab_chunk_size, with_entropy):
    """Chunked logsumexp / target logit / entropy in torch. h [N, H], w [V, H], y [N]."""
    n, v = h.shape[0], w.shape[0]
    acc = _acc_dtype(h.dtype)
    lse = torch.empty(n, device=h.device, dtype=acc)
    tgt = torch.empty(n, device=h.device, dtype=acc)
    ent = torch.empty(n, device=h.device, dtype=acc) if with_entropy else None
    for n0 in range(0, n, chunk_size):
        n1 = min(n0 + chunk_size, n)
        hc, yc = h[n0:n1], y[n0:n1]
        run_lse = torch.full((n1 - n0,), float("-inf"), device=h.device, dtype=acc)
        run_tgt = torch.zeros((n1 - n0,), device=h.device, dtype=acc)
        run_ez = torch.zeros((n1 - n0,), device=h.device, dtype=acc) if with_entropy else None
        for v0 in range(0, v, vocab_chunk_size):
            v1 = min(v0 + vocab_chunk_size, v)
            z = (hc @ w[v0:v1].t()).to(acc)  # [C, Vc]
            if inv_t != 1.0:
                z.mul_(inv_t)
            rel = yc - v0
            inside = (rel >= 0) & (rel < v1 - v0)
            picked = z.gather(1, rel.clamp(0, v1 - v0 - 1).unsqueeze(1)).squeeze(1)
            run_tgt += torch.where(inside, picked, torch.zeros_like(picked))
            lse_c = torch.logsumexp(z, dim=-1)
            new_lse = torch.logaddexp(run_lse, lse_c)
            if with_entropy:
                ez_c = (torch.softmax(z, dim=-1) * z).sum(-1)
                run_ez = run_ez * torch.exp(run_lse - new_lse) + ez_c * torch.exp(lse_c - new_lse)
            run_lse = new_lse
            del z
        lse[n0:n1] = run_lse
        tgt[n0:n1] = run_tgt
        if with_entropy:
            ent[n0:n1] = run_lse - run_ez
    return lse, tgt, ent


def _torch_dlogits(hc, wc, yc, lse_c, coef_c, inv_t, v_offset):
    """D = coef * (onehot(y) - softmax) for one [C, Vc] tile, in hc's dtype."""
    acc = _acc_dtype(hc.dtype)
    d = (hc @ wc.t()).to(acc)
    if inv_t != 1.0:
        d.mul_(inv_t)
    d.sub_(lse_c.to(acc).unsqueeze(1)).exp_().mul_(-coef_c.to(acc).unsqueeze(1))
    vc = wc.shape[0]
    rel = yc - v_offset
    inside = ((rel >= 0) & (rel < vc)).to(acc)
    d.scatter_add_(1, rel.clamp(0, vc - 1).unsqueeze(1), (coef_c.to(acc) * inside).unsqueeze(1))
    return d.to(hc.dtype)


def _triton_dlogits(hc, wc, yc, lse_c, coef_c, inv_t, v_offset, mode="fused"):
    from kernels import logprobs_triton as K

    if mode == "cublas":
        return K.dlogits_cublas(hc, wc, yc, lse_c, coef_c, inv_t, v_offset)
    return K.dlogits(hc, wc, yc, lse_c, coef_c, inv_t, v_offset)


_ACC_MM_MODE = "addmm"  # how 16-bit CUDA GEMMs accumulate into fp32; downgraded on failure


def _acc_mm_(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``c += a @ b`` with ``c`` fp32/fp64 and ``a``, ``b`` possibly 16-bit. On CUDA, one cuBLAS
    GEMM with an fp32 C operand (``addmm(..., out_dtype=fp32, out=c)``, beta = 1) where torch
    supports it; else an fp32-output GEMM plus an add; else the GEMM in the operands' dtype,
    upcast and added."""
    global _ACC_MM_MODE
    if a.dtype == c.dtype:
        c.addmm_(a, b)
        return
    if c.is_cuda and _ACC_MM_MODE == "addmm":
        try:
            torch.addmm(c, a, b, out_dtype=c.dtype, out=c)
            return
        except Exception:  # this torch has no fp32-output addmm for these operands
            _ACC_MM_MODE = "mm"
    if c.is_cuda and _ACC_MM_MODE == "mm":
        try:
            c += torch.mm(a, b, out_dtype=c.dtype)
            return
        except Exception:
            _ACC_MM_MODE = "upcast"
    c += (a @ b).to(c.dtype)


def _backward(h, w, y, lse, coef, inv_t, need_h, need_w, chunk_size, vocab_chunk_size, dlogits_fn):
    """grad_hidden [N, H] and grad_W [V, H] (None where not needed) from coef = g / tau."""
    n, hdim = h.shape
    v = w.shape[0]
    acc = _acc_dtype(h.dtype)
    grad_w = torch.zeros_like(w) if need_w else None
    # Skip tokens whose upstream gradient is exactly zero (masked padding).
    active = (coef != 0).nonzero().squeeze(1)
    n_act = int(active.numel())
    if n_act == 0:
        return (torch.zeros_like(h) if need_h else None), grad_w
    if n_act < n:
        h_a, y_a, lse_a, coef_a = h.index_select(0, active), y[active], lse[active], coef[active]
    else:
        h_a, y_a, lse_a, coef_a = h, y, lse, coef
    grad_h = torch.zeros((n_act, hdim), device=h.device, dtype=acc) if need_h else None
    single = n_act <= chunk_size  # one token chunk: grad_W chunks are written whole, no accumulator
    for v0 in range(0, v, vocab_chunk_size):
        v1 = min(v0 + vocab_chunk_size, v)
        wc = w[v0:v1]
        gw_acc = None if single or not need_w else torch.zeros((v1 - v0, hdim), device=w.device, dtype=acc)
        for n0 in range(0, n_act, chunk_size):
            n1 = min(n0 + chunk_size, n_act)
            hc = h_a[n0:n1]
            d = dlogits_fn(hc, wc, y_a[n0:n1], lse_a[n0:n1], coef_a[n0:n1], inv_t, v0)  # [C, Vc]
            if need_h:
                _acc_mm_(grad_h[n0:n1], d, wc)
            if need_w:
                if single:
                    torch.mm(d.t(), hc, out=grad_w[v0:v1])
                else:
                    _acc_mm_(gw_acc, d.t(), hc)
            del d
        if gw_acc is not None:
            grad_w[v0:v1] = gw_acc
    if need_h:
        if n_act < n:
            full = torch.zeros_like(h)
            full.index_copy_(0, active, grad_h.to(h.dtype))
            grad_h = full
        else:
            grad_h = grad_h.to(h.dtype)
    return grad_h, grad_w


def _forward(impl, h, w, y, inv_t, chunk_size, vocab_chunk_size, with_entropy):
    if impl == "triton":
        from kernels import logprobs_triton as K

        if K.FWD_MODE == "cublas":
            return K.lse_forward_cublas(h, w, y, inv_t, with_entropy, chunk_size, vocab_chunk_size)
        return K.lse_forward(h, w, y, inv_t, with_entropy)
    return _torch_forward(h, w, y, inv_t, chunk_size, vocab_chunk_size, with_entropy)


class _ChunkedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, y, inv_t, chunk_size, vocab_chunk_size, impl, with_entropy):
        lse, tgt, ent = _forward(impl, h, w, y, inv_t, chunk_size, vocab_chunk_size, with_entropy)
        ctx.save_for_backward(h, w, y, lse)
        ctx.cfg = (inv_t, chunk_size, vocab_chunk_size, impl)
        if impl == "triton":  # the backward mode in force now, not at backward time
            from kernels.logprobs_triton import BWD_MODE

            ctx.dlogits_fn = functools.partial(_triton_dlogits, mode=BWD_MODE)
        else:
            ctx.dlogits_fn = _torch_dlogits
        logps = tgt - lse
        if ent is None:
            return logps, None
        ctx.mark_non_differentiable(ent)
        return logps, ent

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logps, grad_ent):
        h, w, y, lse = ctx.saved_tensors
        inv_t, chunk_size, vocab_chunk_size, impl = ctx.cfg
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_logps is None or not (need_h or need_w):
            return (None,) * 8
        coef = grad_logps.to(lse.dtype) * inv_t
        grad_h, grad_w = _backward(
            h, w, y, lse, coef, inv_t, need_h, need_w, chunk_size, vocab_chunk_size, ctx.dlogits_fn
        )
        return grad_h, grad_w, None, None, None, None, None, None


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    impl: str = "auto",
    with_entropy: bool = False,
    vocab_chunk_size: int = DEFAULT_VOCAB_CHUNK_SIZE,
):
    """Log-probabilities of ``token_ids`` under ``softmax(hidden @ weight.T / temperature)``.

    Args:
        hidden: ``[..., H]`` final hidden states at the positions that predict ``token_ids``
            (typically ``[B, T, H]``).
        weight: ``[V, H]`` the LM head (frozen under LoRA, trainable in full fine-tuning;
            gradients flow to it only when it requires grad).
        token_ids: ``[...]`` integer ids in ``[0, V)``.
        temperature: the sampling temperature (> 0) the logits are divided by.
        chunk_size: tokens per chunk (``ModelConfig.logprob_chunk_size``).
        impl: 'auto', 'torch', 'triton' or 'full' (see the module docstring).
        with_entropy: also return the per-token entropy of the tempered distribution
            (detached).
        vocab_chunk_size: vocabulary entries per chunk (torch forward, and both backwards).

    Returns:
        ``logps`` ``[...]`` (float32; float64 for float64 inputs), or ``(logps, entropy)``.
    """
    if hidden.shape[:-1] != token_ids.shape:
        raise ValueError(
            f"token_ids {tuple(token_ids.shape)} must match hidden's leading dims {tuple(hidden.shape[:-1])}"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, H={hidden.shape[-1]}], got {tuple(weight.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1 or vocab_chunk_size < 1:
        raise ValueError("chunk_size and vocab_chunk_size must be >= 1")
    if weight.dtype != hidden.dtype:
        weight = weight.to(hidden.dtype)
    impl = resolve_impl(impl, hidden.device, hidden.dtype)
    if impl == "full":
        return full_logprobs(hidden, weight, token_ids, temperature, with_entropy)

    lead = hidden.shape[:-1]
    h = hidden.reshape(-1, hidden.shape[-1])
    if h.stride(-1) != 1:
        h = h.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    y = token_ids.reshape(-1)
    v = weight.shape[0]
    if y.numel() and (bool((y < 0).any()) or bool((y >= v).any())):
        raise ValueError(f"token_ids must lie in [0, {v})")
    inv_t = 1.0 / float(temperature)

    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if needs_grad:
        logps, ent = _ChunkedLogprobs.apply(h, weight, y, inv_t, chunk_size, vocab_chunk_size, impl, with_entropy)
    else:
        with torch.no_grad():
            lse, tgt, ent = _forward(impl, h, weight, y, inv_t, chunk_size, vocab_chunk_size, with_entropy)
            logps = tgt - lse
    logps = logps.reshape(lead)
    if not with_entropy:
        return logps
    return logps, ent.reshape(lead)
