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
* the entropy ``H = -sum_j p_j log p_j`` (``with_entropy=True``) is differentiable too: with
  ``g_H = dL/dH``, ``dH/dz_j = -p_j (log p_j + H)`` per tempered logit, so the same pass forms
  ``D = (g onehot(y) - p (g + g_H (log p + H))) / tau`` (from the saved logsumexp and entropy);
  a loss that does not use the entropies costs nothing more.

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

Precision: logsumexp, softmax and the returned logprobs and entropies are fp32 (float64 when
the inputs are float64, for gradient checks).

The backward is first-order only (no double backward). Under ``torch.no_grad()`` (reference
and old-policy logprobs) nothing is saved for backward.

Training with a loss of the logprobs (and entropies): :func:`fused_linear_loss` takes the loss as
a closure over chunks of whole rows and forms the gradients to ``hidden`` and ``weight`` in its
forward pass, from each chunk's logits held once over the whole vocabulary: executed FLOPs 6NHV with a
trainable head (4NHV frozen) against 8NHV (6NHV) for ``token_logprobs`` then the loss, whose
backward recomputes the logits. See its docstring.

Chunk sizes: ``chunk_size`` tokens x ``vocab_chunk_size`` entries bound the logits chunk.
When all the tokens with a gradient fit in one token chunk, each ``grad_W`` slice is written
by one GEMM; otherwise an fp32 ``[Vc, H]`` accumulator is added per token chunk (extra
memory traffic). On an H100 at 16384 tokens, 16384 x 16384 chunks ran 137 ms against 148 ms
for the default 4096 x 8192, for 1.2 GiB more peak memory (BENCHMARKS.md).
"""

from __future__ import annotations

import functools
from typing import Callable

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
    return logps, -(logp_all.exp() * logp_all).sum(-1)


_MM_OUT_DTYPE = True  # torch has a GEMM with an fp32 output for 16-bit CUDA operands; cleared on failure


def _mm_acc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in the accumulation dtype of ``a`` (fp32 for 16-bit operands): on CUDA one GEMM
    with an fp32 output (the accumulator itself, unrounded) where torch supports it."""
    global _MM_OUT_DTYPE
    acc = _acc_dtype(a.dtype)
    if a.dtype == acc:
        return a @ b
    if a.is_cuda and _MM_OUT_DTYPE:
        try:
            return torch.mm(a, b, out_dtype=acc)
        except Exception:  # this torch has no fp32-output GEMM for these operands
            _MM_OUT_DTYPE = False
    return (a @ b).to(acc)


# --- chunked torch forward / backward pieces ----------------------------------------------------


class _RunningStats:
    """Per-token running logsumexp, target logit and (for the entropy) ``E_softmax[z]`` over
    vocabulary slices of tempered logits, in torch."""

    def __init__(self, n: int, device: torch.device, dtype: torch.dtype, with_entropy: bool):
        self.lse = torch.full((n,), float("-inf"), device=device, dtype=dtype)
        self.tgt = torch.zeros((n,), device=device, dtype=dtype)
        self.ez = torch.zeros((n,), device=device, dtype=dtype) if with_entropy else None

    def update(self, z: torch.Tensor, y: torch.Tensor, v_offset: int) -> None:
        """Fold in ``z`` ``[C, Vc]``: tempered logits of vocabulary entries ``v_offset ...``."""
        vc = z.shape[1]
        rel = y - v_offset
        inside = (rel >= 0) & (rel < vc)
        picked = z.gather(1, rel.clamp(0, vc - 1).unsqueeze(1)).squeeze(1)
        self.tgt += torch.where(inside, picked, torch.zeros_like(picked))
        lse_c = torch.logsumexp(z, dim=-1)
        new_lse = torch.logaddexp(self.lse, lse_c)
        if self.ez is not None:
            ez_c = (torch.exp(z - lse_c.unsqueeze(1)) * z).sum(-1)  # E_softmax[z] over the slice
            self.ez = self.ez * torch.exp(self.lse - new_lse) + ez_c * torch.exp(lse_c - new_lse)
        self.lse = new_lse

    def result(self):
        """(logsumexp, target logit, entropy or None)."""
        return self.lse, self.tgt, None if self.ez is None else self.lse - self.ez


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
        stats = _RunningStats(n1 - n0, h.device, acc, with_entropy)
        for v0 in range(0, v, vocab_chunk_size):
            v1 = min(v0 + vocab_chunk_size, v)
            z = _mm_acc(hc, w[v0:v1].t())  # [C, Vc]
            if inv_t != 1.0:
                z.mul_(inv_t)
            stats.update(z, yc, v0)
            del z
        lse[n0:n1], tgt[n0:n1], ent_c = stats.result()
        if with_entropy:
            ent[n0:n1] = ent_c
    return lse, tgt, ent


def _torch_dlogits_(z, yc, lse_c, coef_c, inv_t, v_offset, out_dtype, ent_c=None, ecoef_c=None):
    """D = coef * (onehot(y) - p) from raw logits ``z`` ``[C, Vc]`` (acc dtype), p the softmax of
    the tempered logits; with ``ecoef_c`` (dL/dH / tau, per token) and the entropies ``ent_c``,
    also the entropy's part ``- ecoef * p * (log p + H)``. Computed in place in ``z`` (which is
    spent; one more ``[C, Vc]`` temporary for the entropy's part), returned in ``out_dtype``."""
    acc = z.dtype
    if inv_t != 1.0:
        z.mul_(inv_t)
    z.sub_(lse_c.to(acc).unsqueeze(1))  # log p
    coef = coef_c.to(acc).unsqueeze(1)
    if ecoef_c is None:
        z.exp_().mul_(-coef)
    else:
        p = torch.exp(z)
        z.add_(ent_c.to(acc).unsqueeze(1)).mul_(ecoef_c.to(acc).unsqueeze(1)).add_(coef).mul_(p).neg_()
        del p
    vc = z.shape[1]
    rel = yc - v_offset
    inside = ((rel >= 0) & (rel < vc)).to(acc)
    z.scatter_add_(1, rel.clamp(0, vc - 1).unsqueeze(1), (coef_c.to(acc) * inside).unsqueeze(1))
    return z.to(out_dtype)


def _torch_dlogits(hc, wc, yc, lse_c, coef_c, inv_t, v_offset, ent_c=None, ecoef_c=None):
    """D (:func:`_torch_dlogits_`) for one [C, Vc] tile, in hc's dtype."""
    return _torch_dlogits_(_mm_acc(hc, wc.t()), yc, lse_c, coef_c, inv_t, v_offset, hc.dtype, ent_c, ecoef_c)


def _triton_dlogits(hc, wc, yc, lse_c, coef_c, inv_t, v_offset, ent_c=None, ecoef_c=None, mode="fused"):
    from kernels import logprobs_triton as K

    if mode == "cublas":
        return K.dlogits_cublas(hc, wc, yc, lse_c, coef_c, inv_t, v_offset, ent=ent_c, ecoef=ecoef_c)
    return K.dlogits(hc, wc, yc, lse_c, coef_c, inv_t, v_offset, ent=ent_c, ecoef=ecoef_c)


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


def _backward(
    h, w, y, lse, coef, inv_t, need_h, need_w, chunk_size, vocab_chunk_size, dlogits_fn, grad_w=None,
    ent=None, ecoef=None,
):
    """grad_hidden [N, H] and grad_W [V, H] (None where not needed) from coef = g / tau and, when
    the entropies ``ent`` have a gradient g_H, ``ecoef = g_H / tau`` (None: no entropy term).
    ``grad_w``: a [V, H] tensor to add grad_W into (returned), instead of a new one."""
    n, hdim = h.shape
    v = w.shape[0]
    acc = _acc_dtype(h.dtype)
    add = grad_w is not None
    if need_w and grad_w is None:
        grad_w = torch.zeros_like(w)
    # Skip tokens whose upstream gradients are exactly zero (masked padding).
    live = coef != 0 if ecoef is None else (coef != 0) | (ecoef != 0)
    active = live.nonzero().squeeze(1)
    n_act = int(active.numel())
    if n_act == 0:
        return (torch.zeros_like(h) if need_h else None), grad_w
    if ecoef is None:
        ent = None
    if n_act < n:
        h_a, y_a, lse_a, coef_a = h.index_select(0, active), y[active], lse[active], coef[active]
        ent_a, ecoef_a = (None, None) if ecoef is None else (ent[active], ecoef[active])
    else:
        h_a, y_a, lse_a, coef_a, ent_a, ecoef_a = h, y, lse, coef, ent, ecoef
    grad_h = torch.zeros((n_act, hdim), device=h.device, dtype=acc) if need_h else None
    single = n_act <= chunk_size  # one token chunk: grad_W chunks are written whole, no accumulator
    for v0 in range(0, v, vocab_chunk_size):
        v1 = min(v0 + vocab_chunk_size, v)
        wc = w[v0:v1]
        gw_acc = None
        if need_w and not single:
            gw_acc = grad_w[v0:v1].to(acc) if add else torch.zeros((v1 - v0, hdim), device=w.device, dtype=acc)
        for n0 in range(0, n_act, chunk_size):
            n1 = min(n0 + chunk_size, n_act)
            hc = h_a[n0:n1]
            ent_c, ecoef_c = (None, None) if ecoef_a is None else (ent_a[n0:n1], ecoef_a[n0:n1])
            d = dlogits_fn(hc, wc, y_a[n0:n1], lse_a[n0:n1], coef_a[n0:n1], inv_t, v0, ent_c, ecoef_c)  # [C, Vc]
            if need_h:
                _acc_mm_(grad_h[n0:n1], d, wc)
            if need_w:
                if single and add:
                    grad_w[v0:v1].addmm_(d.t(), hc)
                elif single:
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
        ctx.save_for_backward(h, w, y, lse, ent)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no work for it
        ctx.cfg = (inv_t, chunk_size, vocab_chunk_size, impl)
        if impl == "triton":  # the backward mode in force now, not at backward time
            from kernels.logprobs_triton import BWD_MODE

            ctx.dlogits_fn = functools.partial(_triton_dlogits, mode=BWD_MODE)
        else:
            ctx.dlogits_fn = _torch_dlogits
        return tgt - lse, ent

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logps, grad_ent):
        h, w, y, lse, ent = ctx.saved_tensors
        inv_t, chunk_size, vocab_chunk_size, impl = ctx.cfg
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if (grad_logps is None and grad_ent is None) or not (need_h or need_w):
            return (None,) * 8
        coef = torch.zeros_like(lse) if grad_logps is None else grad_logps.to(lse.dtype) * inv_t
        ecoef = None if grad_ent is None else grad_ent.to(lse.dtype) * inv_t
        grad_h, grad_w = _backward(
            h, w, y, lse, coef, inv_t, need_h, need_w, chunk_size, vocab_chunk_size, ctx.dlogits_fn,
            ent=ent, ecoef=ecoef,
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
        with_entropy: also return the per-token entropy of the tempered distribution; it is
            differentiable (an entropy bonus in the loss sends its gradient back through it).
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


# --- the loss with its gradient formed in the forward pass ----------------------------------------

#: Tokens whose full-vocabulary logits are held at once (ModelConfig.fused_loss_chunk_size).
DEFAULT_FUSED_CHUNK_SIZE = 1024

#: ``loss_fn(rows, logps, entropies) -> loss``: the loss of rows ``rows`` (a slice of the batch)
#: from their ``[rows, T]`` logprobs (and entropies, or None).
RowLoss = Callable[[slice, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

def _held_row_stats(impl, z, y, inv_t, vocab_chunk_size, with_entropy):
    """(logsumexp, target logit, entropy or None) of held raw logits ``z`` ``[C, V]``."""
    if impl == "triton":
        from kernels import logprobs_triton as K

        return K.row_stats_from_logits(z, y, inv_t, with_entropy)
    stats = _RunningStats(z.shape[0], z.device, z.dtype, with_entropy)
    for v0 in range(0, z.shape[1], vocab_chunk_size):
        zc = z[:, v0 : v0 + vocab_chunk_size]
        stats.update(zc * inv_t if inv_t != 1.0 else zc, y, v0)
    return stats.result()


def _held_grads(impl, z, h, w, y, lse, coef, inv_t, need_h, need_w, vocab_chunk_size, grad_w, ent=None, ecoef=None):
    """grad_hidden ``[C, H]`` of one chunk (None if not needed) and grad_W with the chunk's part
    added (a new tensor when ``grad_w`` is None), from its held raw logits ``z`` ``[C, V]``, which
    this spends: per vocabulary slice, ``D = coef * (onehot - softmax)`` (plus the entropy's
    part when ``ecoef`` is given, see :func:`_torch_dlogits_`) is formed in ``h``'s dtype,
    ``grad_h += D @ W_c`` (fp32 accumulator), ``grad_W_c (+)= D.T @ h``."""
    c, v = z.shape
    first = grad_w is None
    if need_w and first:
        grad_w = torch.empty_like(w)
    grad_h = torch.zeros((c, h.shape[1]), device=h.device, dtype=z.dtype) if need_h else None
    if impl == "triton":
        from kernels import logprobs_triton as K

        y = y.to(torch.int32)  # once, not per slice
    for v0 in range(0, v, vocab_chunk_size):
        v1 = min(v0 + vocab_chunk_size, v)
        if impl == "triton":
            d = K.dlogits_from_logits(z[:, v0:v1], y, lse, coef, inv_t, v0, h.dtype, ent=ent, ecoef=ecoef)
        else:
            d = _torch_dlogits_(z[:, v0:v1], y, lse, coef, inv_t, v0, h.dtype, ent, ecoef)
        wc = w[v0:v1]
        if need_h:
            _acc_mm_(grad_h, d, wc)
        if need_w:
            # Accumulated in W's dtype: one rounding per chunk (an fp32 [V, H] buffer would double
            # the gradient's memory); a 16-bit GEMM with beta = 1 adds in fp32 before rounding.
            if first:
                torch.mm(d.t(), h, out=grad_w[v0:v1])
            else:
                grad_w[v0:v1].addmm_(d.t(), h)
        del d
    return (None if grad_h is None else grad_h.to(h.dtype)), grad_w


def _row_loss_and_grad(loss_fn, rows, logps, entropies, need_grad):
    """The closure's loss on one row chunk (detached), its gradient to ``logps`` (or None without
    ``need_grad``) and to ``entropies`` (None also when the loss does not depend on them)."""
    with torch.enable_grad():
        x = logps.detach().requires_grad_(need_grad)
        e = None if entropies is None else entropies.detach().requires_grad_(need_grad)
        loss = loss_fn(rows, x, e)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(f"loss_fn must return a 0-dim tensor, got {type(loss).__name__} "
                             f"{tuple(getattr(loss, 'shape', ()))}")
        grad = grad_e = None
        if need_grad:
            if loss.requires_grad:
                grad, *rest = torch.autograd.grad(loss, [x] if e is None else [x, e], allow_unused=True)
                grad_e = rest[0] if rest else None
            if grad is None:  # the loss does not depend on these logprobs
                grad = torch.zeros_like(x)
    return loss.detach(), grad, grad_e


def _fused_forward(h, w, y, loss_fn, b, t, inv_t, chunk_size, vocab_chunk_size, impl, with_entropy, need_h, need_w):
    """The chunk loop of :func:`fused_linear_loss`: (loss, logps [N], entropies [N] or None,
    grad_hidden [N, H] or None, grad_W [V, H] or None)."""
    n = h.shape[0]
    acc = _acc_dtype(h.dtype)
    logps = torch.empty(n, device=h.device, dtype=acc)
    ent = torch.empty(n, device=h.device, dtype=acc) if with_entropy else None
    grad_h = torch.empty_like(h) if need_h else None
    grad_w = None
    loss = torch.zeros((), device=h.device, dtype=acc)
    held = t <= chunk_size  # whole rows' full-vocabulary logits fit in one chunk: formed once
    rows_per_chunk = max(1, chunk_size // t) if t else max(b, 1)
    if not held and impl == "triton":
        from kernels.logprobs_triton import BWD_MODE

        dlogits_fn = functools.partial(_triton_dlogits, mode=BWD_MODE)
    else:
        dlogits_fn = _torch_dlogits
    for r0 in range(0, b, rows_per_chunk):
        r1 = min(b, r0 + rows_per_chunk)
        n0, n1 = r0 * t, r1 * t
        hc, yc = h[n0:n1], y[n0:n1]
        z = None
        if held:
            z = _mm_acc(hc, w.t())  # [C, V] raw logits, fp32 (fp64 for fp64 inputs)
            lse, tgt, ent_c = _held_row_stats(impl, z, yc, inv_t, vocab_chunk_size, with_entropy)
        else:  # a row longer than the chunk: logprobs first, then the gradient with the logits recomputed
            lse, tgt, ent_c = _forward(impl, hc, w, yc, inv_t, chunk_size, vocab_chunk_size, with_entropy)
        lp = tgt - lse
        logps[n0:n1] = lp
        if ent is not None:
            ent[n0:n1] = ent_c
        ent_rows = None if ent_c is None else ent_c.view(r1 - r0, t)
        rows = slice(r0, r1)
        loss_c, g, g_ent = _row_loss_and_grad(loss_fn, rows, lp.view(r1 - r0, t), ent_rows, need_h or need_w)
        loss += loss_c
        if g is None:
            continue
        coef = g.reshape(-1).to(acc) * inv_t
        ecoef = None if g_ent is None else g_ent.reshape(-1).to(acc) * inv_t  # the entropies' gradient, if any
        if held:
            gh, grad_w = _held_grads(
                impl, z, hc, w, yc, lse, coef, inv_t, need_h, need_w, vocab_chunk_size, grad_w, ent_c, ecoef
            )
        else:
            gh, grad_w = _backward(
                hc, w, yc, lse, coef, inv_t, need_h, need_w, chunk_size, vocab_chunk_size, dlogits_fn, grad_w=grad_w,
                ent=ent_c, ecoef=ecoef,
            )
        if need_h:
            grad_h[n0:n1] = gh
        del z, gh
    if need_w and grad_w is None:  # no rows
        grad_w = torch.zeros_like(w)
    return loss, logps, ent, grad_h, grad_w


class _FusedLinearLoss(torch.autograd.Function):
    """The loss and both input gradients in forward; backward hands the stored gradients out."""

    @staticmethod
    def forward(ctx, h, w, y, loss_fn, b, t, inv_t, chunk_size, vocab_chunk_size, impl, with_entropy):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss, logps, ent, grad_h, grad_w = _fused_forward(
            h, w, y, loss_fn, b, t, inv_t, chunk_size, vocab_chunk_size, impl, with_entropy, need_h, need_w
        )
        ctx.grads = (grad_h, grad_w)
        ctx.mark_non_differentiable(*(x for x in (logps, ent) if x is not None))
        return loss, logps, ent

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, grad_logps, grad_ent):
        if ctx.grads is None:
            raise RuntimeError(
                "fused_linear_loss computed its gradients in the forward pass and handed them out in the "
                "first backward through it: a second backward (retain_graph=True) is not supported"
            )
        grad_h, grad_w = ctx.grads
        ctx.grads = None  # the returned tensors are then the only references: autograd keeps them, no copy
        if grad_loss is None:
            return (None,) * 11
        # Scaled in place on the device (no host sync to test for grad_loss == 1).
        for g in (grad_h, grad_w):
            if g is not None:
                g.mul_(grad_loss.to(g.dtype))
        return (grad_h, grad_w) + (None,) * 9


def fused_linear_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    token_ids: torch.Tensor,
    loss_fn: RowLoss,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_FUSED_CHUNK_SIZE,
    vocab_chunk_size: int = DEFAULT_VOCAB_CHUNK_SIZE,
    impl: str = "auto",
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A loss of the token logprobs straight from the hidden states, its gradient formed in forward.

    ``loss_fn(rows, logps, entropies)`` is the loss of rows ``rows`` (a slice of the batch)
    from their ``[rows, T]`` logprobs under ``softmax(hidden @ weight.T / temperature)``; the
    returned loss is the sum of ``loss_fn`` over row chunks, so ``loss_fn`` must be additive over
    rows (normalisers of the whole batch passed in, not computed from its arguments) and depend
    on the batch only through the rows it is given. Rows are never split: ``loss_fn`` always sees
    all of a row's tokens (sequence-level ratios and per-sequence normalisers work).

    Per chunk of ``max(1, chunk_size // T)`` rows: the chunk's raw logits over the whole
    vocabulary are formed once (one GEMM, fp32), then their logsumexp, target logit and entropy;
    ``loss_fn`` runs on the chunk's logprobs (and entropies) with autograd on those small
    tensors, giving ``g = dL/dlogp`` (and ``g_H = dL/dH`` when the loss uses the entropies, e.g.
    an entropy bonus); then, per vocabulary slice of the held logits,
    ``D = (g onehot(y) - p (g + g_H (log p + H))) / tau`` (p the softmax; without ``g_H``, as
    without entropies, that term is not formed), ``grad_hidden += D @ W_c`` and (if ``weight``
    requires grad) ``grad_W_c += D.T @ h``. Executed FLOPs 6NHV with a trainable head, 4NHV
    frozen: the logits are never recomputed. Backward multiplies the stored gradients by the
    upstream gradient of the loss (in place) and hands them on, once.

    A row longer than ``chunk_size`` is handled alone in two passes (its logprobs chunked over
    tokens and vocabulary as in :func:`token_logprobs`, then the gradient with the logits
    recomputed: 8NHV for such rows).

    Args:
        hidden: ``[B, T, H]``, one row per sequence.
        weight: ``[V, H]`` the LM head; its gradient is formed only when it requires grad.
        token_ids: ``[B, T]``.
        loss_fn: see above. Its other inputs (old logprobs, advantages, mask...) are constants:
            gradients reach ``hidden`` and ``weight`` through the logprobs and entropies only.
        temperature: the logits are divided by it.
        chunk_size: tokens per chunk whose ``[C, V]`` fp32 logits are held (``C x V x 4``
            bytes); rounded down to whole rows.
        vocab_chunk_size: vocabulary entries per slice of ``D`` (and of the two-pass rows).
        impl: 'auto', 'torch' or 'triton' (CUDA: cuBLAS GEMMs, the softmax passes in Triton).
        with_entropy: also compute per-token entropies (passed to ``loss_fn``, differentiable
            there; returned detached).

    Returns:
        ``(loss, logps, entropies)``: the summed loss (0-dim, differentiable to ``hidden`` and
        ``weight``), detached ``[B, T]`` logprobs and entropies (None without ``with_entropy``),
        fp32 (fp64 for fp64 inputs). Under ``torch.no_grad()`` nothing is stored.

    Precision: grad_W accumulates over row chunks in W's dtype (16-bit: one rounding per chunk,
    the chunk's GEMM itself accumulating in fp32); everything else as :func:`token_logprobs`.
    """
    if hidden.dim() != 3 or token_ids.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden must be [B, T, H] and token_ids [B, T]; got {tuple(hidden.shape)} and {tuple(token_ids.shape)}"
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
        raise ValueError("fused_linear_loss has no 'full' impl: the reference is token_logprobs(impl='full') "
                         "followed by the loss")
    b, t, hdim = hidden.shape
    h = hidden.reshape(b * t, hdim)
    if h.stride(-1) != 1:
        h = h.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    y = token_ids.reshape(-1)
    v = weight.shape[0]
    if y.numel() and (bool((y < 0).any()) or bool((y >= v).any())):
        raise ValueError(f"token_ids must lie in [0, {v})")
    args = (loss_fn, b, t, 1.0 / float(temperature), chunk_size, vocab_chunk_size, impl, with_entropy)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        loss, logps, ent = _FusedLinearLoss.apply(h, weight, y, *args)
    else:
        with torch.no_grad():
            loss, logps, ent, _, _ = _fused_forward(h, weight, y, *args, False, False)
    return loss, logps.view(b, t), None if ent is None else ent.view(b, t)
