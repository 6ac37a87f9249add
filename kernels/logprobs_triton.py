"""Triton kernels for token log-probabilities through the LM head, never holding [N, V] logits.

Forward, "fused" mode (the default): :func:`_fwd_kernel` is a GEMM ``hidden @ weight.T``
(K = hidden size) with an online softmax in its epilogue, so the fp32 logits of a tile live
only in registers. Each program owns ``BLOCK_M`` tokens and one slice of the vocabulary, walks
that slice in ``BLOCK_N`` tiles and keeps, per token, the running max ``m``, the sum
``l = sum exp(z - m)``, the target token's logit and optionally ``sum exp(z - m) * z`` (for
the entropy). The vocabulary is split across programs so that small batches still fill the
GPU; :func:`lse_forward` merges the per-split partials (``[splits, N]`` floats).

Backward: per chunk of tokens and of the vocabulary, ``D = coef * (onehot(y) - p)`` with p the
softmax and ``coef = dL/dlogp / temperature`` (minus ``ecoef * p * (log p + H)`` when the
entropies carry a gradient too: ``ecoef = dL/dH / temperature``, as dH/dz_j = -p_j (log p_j + H))
is formed in the input dtype; the two gradient GEMMs
(``grad_hidden += D @ W_c``, ``grad_W_c (+)= D.T @ h``) run on cuBLAS in
:mod:`grpo_ray.logprobs`, where the chunk loops live. ``D`` comes from either

* "cublas" mode (the default): one cuBLAS GEMM into an fp32 logits chunk, then one fused
  Triton pass (:func:`_dlogits_from_logits_kernel`: exp, one-hot, scale, cast); or
* "fused" mode: :func:`_dlogits_kernel`, a Triton GEMM with that pass in its epilogue.

The forward has a "cublas" mode too (:func:`lse_forward_cublas`: cuBLAS fp32 chunk + a fused
online-logsumexp pass). Both modes keep fp32 logits, so they agree to fp32 rounding. On an
H100 (BENCHMARKS.md) the cuBLAS backward beats the fused one by 3-6% end to end
(cuBLAS ~800 TFLOPS against 320-535 for the Triton GEMM); the two forward modes are within
2% end to end at 16384 tokens and the fused one is 9% faster at 4096, hence the defaults. Choose with :func:`set_modes` or the environment
variables ``GRPO_RAY_TRITON_FWD_MODE`` / ``GRPO_RAY_TRITON_BWD_MODE``.

The fused loss (``grpo_ray.logprobs.fused_linear_loss``) holds a chunk's fp32 logits over the
whole vocabulary (one cuBLAS GEMM) and runs two passes over them here:
:func:`row_stats_from_logits` (logsumexp, target logit, entropy; one read) and, per vocabulary
slice, :func:`dlogits_from_logits` (``D``; one read, one 16-bit write).

The references these are tested against are ``grpo_ray.logprobs`` with ``impl="torch"`` and
``impl="full"`` (plain logits) and float64; see ``tests/kernels/test_logprobs_triton.py``.

Triton is imported at module import: import this module lazily (``grpo_ray.logprobs`` does),
so that CPU installs without Triton work.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

# Tile configurations (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), per kernel and per
# operand width. 16-bit operands run on the tensor cores (wgmma on Hopper); fp32 operands use
# "ieee" dots (exact fp32, like torch's default matmul) and smaller tiles.
# Overridable for tuning sweeps: GRPO_RAY_TRITON_FWD_CONFIG / GRPO_RAY_TRITON_BWD_CONFIG =
# "BM,BN,BK,warps,stages".
_DEFAULT_CONFIGS = {
    # Chosen by benchmarks/loss_bench.py --sweep-configs on an H100 (BENCHMARKS.md).
    ("fwd", 16): (128, 256, 64, 8, 3),  # with 33 vocabulary slices: 536-580 TFLOPS at N=16384, H=4096
    ("bwd", 16): (256, 128, 64, 8, 3),  # best of 4 at 4096 tokens x 8192 vocabulary in 2 of 3 sweeps
    ("fwd", 32): (64, 64, 32, 4, 2),
    ("bwd", 32): (64, 64, 32, 4, 2),
}
_CONFIG_OVERRIDES: dict[tuple[str, int], tuple[int, int, int, int, int]] = {}
_NUM_SPLITS: int | None = None  # vocabulary slices of the forward; None = heuristic


def set_num_splits(num_splits: int | None) -> None:
    """Force the forward's number of vocabulary slices (None: a quarter of the SM count, at
    least 8)."""
    global _NUM_SPLITS
    _NUM_SPLITS = num_splits


def set_config(kind: str, bits: int, config: tuple[int, int, int, int, int] | None) -> None:
    """Force the tile config of one kernel (``kind`` 'fwd' or 'bwd') for one operand width
    (16 or 32 bits); None restores the default. For benchmarks and tuning sweeps."""
    if config is None:
        _CONFIG_OVERRIDES.pop((kind, bits), None)
    else:
        _CONFIG_OVERRIDES[(kind, bits)] = tuple(int(c) for c in config)  # type: ignore[assignment]


def get_config(kind: str, dtype: torch.dtype) -> tuple[int, int, int, int, int]:
    bits = 32 if dtype == torch.float32 else 16
    if (kind, bits) in _CONFIG_OVERRIDES:
        return _CONFIG_OVERRIDES[(kind, bits)]
    env = os.environ.get(f"GRPO_RAY_TRITON_{kind.upper()}_CONFIG")
    if env and bits == 16:
        bm, bn, bk, w, s = (int(x) for x in env.split(","))
        return bm, bn, bk, w, s
    return _DEFAULT_CONFIGS[(kind, bits)]


_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)


def _check(hidden: torch.Tensor, weight: torch.Tensor) -> None:
    if hidden.dtype not in _SUPPORTED or weight.dtype != hidden.dtype:
        raise TypeError(
            f"the triton logprob kernels take fp16/bf16/fp32 hidden and weight of one dtype, got "
            f"{hidden.dtype} and {weight.dtype}; use impl='torch' for other dtypes"
        )
    if hidden.stride(-1) != 1 or weight.stride(-1) != 1:
        raise ValueError("hidden and weight must be contiguous in their last dimension")


@triton.jit
def _logits_tile(
    h_rows, w_rows, row_ok, col_ok, K,
    EVEN_K: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """fp32 ``[BLOCK_M, BLOCK_N]`` tile of ``hidden @ weight.T`` (rows/columns out of range load 0)."""
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        if EVEN_K:
            a = tl.load(h_rows + kk[None, :], mask=row_ok[:, None], other=0.0)
            b = tl.load(w_rows + kk[None, :], mask=col_ok[:, None], other=0.0)
        else:
            k_ok = kk < K
            a = tl.load(h_rows + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_rows + kk[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=DOT_PREC)
    return acc


@triton.jit(do_not_specialize=["N", "V", "num_splits"])
def _fwd_kernel(
    h_ptr, w_ptr, y_ptr,  # [N, K], [V, K], [N]
    m_ptr, l_ptr, t_ptr, e_ptr,  # [S, N] fp32 partials
    N, V, K, stride_hn, stride_wv, num_splits, inv_t,
    WITH_ENTROPY: tl.constexpr, EVEN_K: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    # Splits vary fastest: programs running together share the same hidden block (L2 reuse)
    # and walk different vocabulary slices.
    pid_m = pid // num_splits
    pid_s = pid % num_splits
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < N
    y = tl.load(y_ptr + offs_m, mask=row_ok, other=-1)
    h_rows = h_ptr + offs_m.to(tl.int64)[:, None] * stride_hn

    tiles = tl.cdiv(V, BLOCK_N)
    tiles_per_split = tl.cdiv(tiles, num_splits)
    v_lo = pid_s * tiles_per_split * BLOCK_N
    v_hi = tl.minimum(v_lo + tiles_per_split * BLOCK_N, V)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    t_i = tl.zeros([BLOCK_M], tl.float32)
    e_i = tl.zeros([BLOCK_M], tl.float32)
    for v0 in range(v_lo, v_hi, BLOCK_N):
        offs_n = v0 + tl.arange(0, BLOCK_N)
        col_ok = offs_n < v_hi
        w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wv
        acc = _logits_tile(h_rows, w_rows, row_ok, col_ok, K, EVEN_K, DOT_PREC, BLOCK_M, BLOCK_N, BLOCK_K)
        z = acc * inv_t
        z = tl.where(col_ok[None, :], z, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(z, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(z - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if WITH_ENTROPY:
            e_i = e_i * alpha + tl.sum(tl.where(col_ok[None, :], p * z, 0.0), 1)
        t_i += tl.sum(tl.where(offs_n[None, :] == y[:, None], z, 0.0), 1)
        m_i = m_new

    out = pid_s * N + offs_m
    tl.store(m_ptr + out, m_i, mask=row_ok)
    tl.store(l_ptr + out, l_i, mask=row_ok)
    tl.store(t_ptr + out, t_i, mask=row_ok)
    if WITH_ENTROPY:
        tl.store(e_ptr + out, e_i, mask=row_ok)


@triton.jit(do_not_specialize=["N", "V", "v_offset"])
def _dlogits_kernel(
    h_ptr, w_ptr, y_ptr, lse_ptr, coef_ptr, ent_ptr, ecoef_ptr, d_ptr,  # [N, K], [Vc, K], [N] x5, [N, Vc]
    N, V, K, stride_hn, stride_wv, stride_dn, v_offset, inv_t,
    HAS_ENTROPY: tl.constexpr, EVEN_K: tl.constexpr, DOT_PREC: tl.constexpr, GROUP_M: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(N, BLOCK_M)
    num_pid_n = tl.cdiv(V, BLOCK_N)
    # Grouped ordering (as in Triton's matmul tutorial) for L2 reuse of both operands.
    group = GROUP_M * num_pid_n
    first_m = (pid // group) * GROUP_M
    group_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % group) % group_m)
    pid_n = (pid % group) // group_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = offs_m < N
    col_ok = offs_n < V
    h_rows = h_ptr + offs_m.to(tl.int64)[:, None] * stride_hn
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wv
    acc = _logits_tile(h_rows, w_rows, row_ok, col_ok, K, EVEN_K, DOT_PREC, BLOCK_M, BLOCK_N, BLOCK_K)

    y = tl.load(y_ptr + offs_m, mask=row_ok, other=-1)
    lse = tl.load(lse_ptr + offs_m, mask=row_ok, other=0.0)
    coef = tl.load(coef_ptr + offs_m, mask=row_ok, other=0.0)
    log_p = acc * inv_t - lse[:, None]
    p = tl.exp(log_p)
    onehot = (offs_n[None, :] + v_offset) == y[:, None]
    if HAS_ENTROPY:
        ent = tl.load(ent_ptr + offs_m, mask=row_ok, other=0.0)
        ecoef = tl.load(ecoef_ptr + offs_m, mask=row_ok, other=0.0)
        d = tl.where(onehot, coef[:, None], 0.0) - p * (coef[:, None] + ecoef[:, None] * (log_p + ent[:, None]))
    else:
        d = (tl.where(onehot, 1.0, 0.0) - p) * coef[:, None]
    d_ptrs = d_ptr + offs_m.to(tl.int64)[:, None] * stride_dn + offs_n[None, :]
    tl.store(d_ptrs, d.to(d_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def _entropy_inputs(
    ent: torch.Tensor | None, ecoef: torch.Tensor | None, placeholder: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The entropy term's fp32 per-token inputs for a kernel, or ``placeholder`` twice (not read)
    when there is none (``ecoef`` None)."""
    if ecoef is None:
        return placeholder, placeholder
    if ent is None:
        raise ValueError("ecoef (the entropies' gradient) needs ent, the entropies")
    return ent.to(torch.float32).contiguous(), ecoef.to(torch.float32).contiguous()


@functools.lru_cache(maxsize=None)
def _num_sms_of(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _num_sms(device: torch.device) -> int:
    return _num_sms_of(device.index if device.index is not None else torch.cuda.current_device())


def lse_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    token_ids: torch.Tensor,
    inv_temperature: float,
    with_entropy: bool = False,
    num_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-token ``logsumexp(z)``, target logit ``z[y]`` and (optionally) entropy, fp32 ``[N]``,
    where ``z = hidden @ weight.T * inv_temperature``. hidden ``[N, K]``, weight ``[V, K]``,
    token_ids ``[N]`` in ``[0, V)``."""
    _check(hidden, weight)
    n, k = hidden.shape
    v = weight.shape[0]
    bm, bn, bk, warps, stages = get_config("fwd", hidden.dtype)
    m_blocks = triton.cdiv(n, bm)
    if num_splits is None:
        num_splits = _NUM_SPLITS
    if num_splits is None:
        # Measured on an H100 (132 SMs) at N = 16384: 33 slices beat 8 and 16 by 8-17% for
        # every tile config tried (more, shorter programs; m_blocks * 33 is whole waves when
        # m_blocks is a multiple of 4).
        num_splits = max(8, _num_sms(hidden.device) // 4)
    num_splits = max(1, min(num_splits, triton.cdiv(v, bn)))
    f32 = dict(device=hidden.device, dtype=torch.float32)
    m = torch.empty((num_splits, n), **f32)
    l = torch.empty((num_splits, n), **f32)  # noqa: E741
    t = torch.empty((num_splits, n), **f32)
    e = torch.empty((num_splits, n), **f32) if with_entropy else m
    y = token_ids.to(torch.int32).contiguous()
    if n > 0:
        _fwd_kernel[(m_blocks * num_splits,)](
            hidden, weight, y, m, l, t, e,
            n, v, k, hidden.stride(0), weight.stride(0), num_splits, float(inv_temperature),
            WITH_ENTROPY=with_entropy, EVEN_K=(k % bk == 0),
            DOT_PREC="ieee" if hidden.dtype == torch.float32 else "tf32",
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages,
        )
    m_max = m.max(0).values  # [N]
    scale = torch.exp(m - m_max)  # [S, N]; empty splits have m = -inf -> 0
    total = (l * scale).sum(0)
    lse = m_max + torch.log(total)
    target = t.sum(0)
    entropy = None
    if with_entropy:
        entropy = lse - (e * scale).sum(0) / total
    return lse, target, entropy


def dlogits(
    hidden: torch.Tensor,
    weight_chunk: torch.Tensor,
    token_ids: torch.Tensor,
    lse: torch.Tensor,
    coef: torch.Tensor,
    inv_temperature: float,
    v_offset: int,
    out: torch.Tensor | None = None,
    ent: torch.Tensor | None = None,
    ecoef: torch.Tensor | None = None,
) -> torch.Tensor:
    """``D[n, j] = coef[n] * (1[y_n == v_offset + j] - p[n, j])`` for one vocabulary chunk, with
    ``p = exp(z - lse)``, ``z = hidden @ weight_chunk.T * inv_temperature``; given ``ecoef`` ``[N]``
    (dL/dH / temperature) and the entropies ``ent`` ``[N]``, minus ``ecoef[n] * p[n, j] *
    (log p[n, j] + ent[n])``. hidden ``[N, K]``, weight_chunk ``[Vc, K]``; returns ``[N, Vc]`` in
    hidden's dtype (written into ``out`` if given)."""
    _check(hidden, weight_chunk)
    n, k = hidden.shape
    vc = weight_chunk.shape[0]
    if out is None:
        out = torch.empty((n, vc), device=hidden.device, dtype=hidden.dtype)
    if out.shape != (n, vc) or out.stride(1) != 1 or out.dtype != hidden.dtype:
        raise ValueError(f"out must be a row-major [{n}, {vc}] {hidden.dtype} tensor")
    bm, bn, bk, warps, stages = get_config("bwd", hidden.dtype)
    if n == 0 or vc == 0:
        return out
    grid = (triton.cdiv(n, bm) * triton.cdiv(vc, bn),)
    lse, coef = lse.to(torch.float32).contiguous(), coef.to(torch.float32).contiguous()
    has_entropy = ecoef is not None
    ent, ecoef = _entropy_inputs(ent, ecoef, lse)
    _dlogits_kernel[grid](
        hidden, weight_chunk, token_ids.to(torch.int32).contiguous(), lse, coef, ent, ecoef, out,
        n, vc, k, hidden.stride(0), weight_chunk.stride(0), out.stride(0), int(v_offset),
        float(inv_temperature), HAS_ENTROPY=has_entropy,
        EVEN_K=(k % bk == 0), DOT_PREC="ieee" if hidden.dtype == torch.float32 else "tf32",
        GROUP_M=8, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages,
    )
    return out


# --- "cublas" mode: cuBLAS GEMM into an fp32 logits chunk, softmax fused in a Triton pass -----
#
# The same math with the GEMM on cuBLAS (fp32 output, so the logits are as exact as the fused
# kernels' accumulators) and everything after it in one Triton pass over the [C, Vc] chunk:
# an online-logsumexp update (forward) or the softmax-gradient D (backward). Costs 8 bytes
# (forward) / 10 bytes (backward) of memory traffic per logit on top of the GEMM, repaid
# where cuBLAS beats the fused kernels' Triton GEMM.

FWD_MODE = os.environ.get("GRPO_RAY_TRITON_FWD_MODE", "fused")  # "fused" or "cublas"
BWD_MODE = os.environ.get("GRPO_RAY_TRITON_BWD_MODE", "cublas")


def set_modes(fwd: str | None = None, bwd: str | None = None) -> None:
    """Choose, per direction, 'fused' (Triton GEMM with the softmax in its epilogue) or
    'cublas' (cuBLAS GEMM to an fp32 chunk, then one fused Triton pass)."""
    global FWD_MODE, BWD_MODE
    for m in (fwd, bwd):
        if m is not None and m not in ("fused", "cublas"):
            raise ValueError(f"mode must be 'fused' or 'cublas', got {m!r}")
    FWD_MODE = fwd or FWD_MODE
    BWD_MODE = bwd or BWD_MODE


@triton.jit(do_not_specialize=["Vc", "v_offset"])
def _lse_update_kernel(
    z_ptr, y_ptr, m_ptr, l_ptr, t_ptr, e_ptr,  # [C, Vc] logits chunk; [C] running state (fp32)
    Vc, stride_z, v_offset, inv_t,
    WITH_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0)
    z_row = z_ptr + row.to(tl.int64) * stride_z
    y = tl.load(y_ptr + row)
    m_i = tl.load(m_ptr + row)
    l_i = tl.load(l_ptr + row)
    t_i = tl.load(t_ptr + row)
    e_i = 0.0
    if WITH_ENTROPY:
        e_i = tl.load(e_ptr + row)
    for v0 in range(0, Vc, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        ok = offs < Vc
        z = tl.load(z_row + offs, mask=ok, other=0.0).to(tl.float32) * inv_t
        z = tl.where(ok, z, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(z, 0))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(z - m_new)
        l_i = l_i * alpha + tl.sum(p, 0)
        if WITH_ENTROPY:
            e_i = e_i * alpha + tl.sum(tl.where(ok, p * z, 0.0), 0)
        t_i += tl.sum(tl.where(offs + v_offset == y, z, 0.0), 0)
        m_i = m_new
    tl.store(m_ptr + row, m_i)
    tl.store(l_ptr + row, l_i)
    tl.store(t_ptr + row, t_i)
    if WITH_ENTROPY:
        tl.store(e_ptr + row, e_i)


@triton.jit(do_not_specialize=["Vc", "v_offset"])
def _dlogits_from_logits_kernel(
    z_ptr, y_ptr, lse_ptr, coef_ptr, ent_ptr, ecoef_ptr, d_ptr,  # [C, Vc] logits, [C] x5, [C, Vc] out
    Vc, stride_z, stride_d, v_offset, inv_t,
    HAS_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0)
    z_row = z_ptr + row.to(tl.int64) * stride_z
    d_row = d_ptr + row.to(tl.int64) * stride_d
    y = tl.load(y_ptr + row)
    lse = tl.load(lse_ptr + row)
    coef = tl.load(coef_ptr + row)
    ent = 0.0
    ecoef = 0.0
    if HAS_ENTROPY:
        ent = tl.load(ent_ptr + row)
        ecoef = tl.load(ecoef_ptr + row)
    for v0 in range(0, Vc, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        ok = offs < Vc
        z = tl.load(z_row + offs, mask=ok, other=0.0).to(tl.float32)
        log_p = z * inv_t - lse
        p = tl.exp(log_p)
        onehot = offs + v_offset == y
        if HAS_ENTROPY:
            d = tl.where(onehot, coef, 0.0) - p * (coef + ecoef * (log_p + ent))
        else:
            d = (tl.where(onehot, 1.0, 0.0) - p) * coef
        tl.store(d_row + offs, d.to(d_ptr.dtype.element_ty), mask=ok)


_MM_OUT_DTYPE_OK = True


def _logits_f32(hidden: torch.Tensor, weight_chunk: torch.Tensor) -> torch.Tensor:
    """``hidden @ weight_chunk.T`` as fp32, from one cuBLAS GEMM with an fp32 output when torch
    supports it (else the GEMM in the input dtype, upcast: bf16-rounded logits)."""
    global _MM_OUT_DTYPE_OK
    if hidden.dtype == torch.float32:
        return hidden @ weight_chunk.t()
    if _MM_OUT_DTYPE_OK:
        try:
            return torch.mm(hidden, weight_chunk.t(), out_dtype=torch.float32)
        except Exception:
            _MM_OUT_DTYPE_OK = False
    return (hidden @ weight_chunk.t()).float()


def _block_v(vc: int) -> int:
    return min(4096, triton.next_power_of_2(max(vc, 16)))


def lse_forward_cublas(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    token_ids: torch.Tensor,
    inv_temperature: float,
    with_entropy: bool = False,
    chunk_size: int = 4096,
    vocab_chunk_size: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Same outputs as :func:`lse_forward`, from fp32 cuBLAS logits chunks ``[C, Vc]``."""
    _check(hidden, weight)
    n, v = hidden.shape[0], weight.shape[0]
    f32 = dict(device=hidden.device, dtype=torch.float32)
    lse = torch.empty(n, **f32)
    target = torch.empty(n, **f32)
    entropy = torch.empty(n, **f32) if with_entropy else None
    y_all = token_ids.to(torch.int32).contiguous()
    for n0 in range(0, n, chunk_size):
        n1 = min(n0 + chunk_size, n)
        state = _RowState(n1 - n0, hidden.device, with_entropy)
        for v0 in range(0, v, vocab_chunk_size):
            v1 = min(v0 + vocab_chunk_size, v)
            z = _logits_f32(hidden[n0:n1], weight[v0:v1])  # [C, Vc] fp32
            state.update(z, y_all[n0:n1], v0, inv_temperature)
            del z
        lse[n0:n1], target[n0:n1], ent = state.result()
        if with_entropy:
            entropy[n0:n1] = ent
    return lse, target, entropy


class _RowState:
    """Per-token running max ``m``, sum ``l = sum exp(z - m)``, target logit ``t`` and (for the
    entropy) ``e = sum exp(z - m) * z`` over the vocabulary slices seen so far (fp32 ``[C]``)."""

    def __init__(self, c: int, device: torch.device, with_entropy: bool):
        f32 = dict(device=device, dtype=torch.float32)
        self.m = torch.full((c,), float("-inf"), **f32)
        self.l = torch.zeros(c, **f32)  # noqa: E741
        self.t = torch.zeros(c, **f32)
        self.e = torch.zeros(c, **f32) if with_entropy else self.m
        self.with_entropy = with_entropy

    def update(self, z: torch.Tensor, token_ids_i32: torch.Tensor, v_offset: int, inv_temperature: float) -> None:
        """Fold in ``z`` ``[C, Vc]``: raw logits of vocabulary entries ``v_offset ...`` (any row
        stride, unit column stride)."""
        c, vc = z.shape
        if c == 0 or vc == 0:
            return
        _lse_update_kernel[(c,)](
            z, token_ids_i32, self.m, self.l, self.t, self.e, vc, z.stride(0), v_offset, float(inv_temperature),
            WITH_ENTROPY=self.with_entropy, BLOCK_V=_block_v(vc), num_warps=8,
        )

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        lse = self.m + torch.log(self.l)
        return lse, self.t, (lse - self.e / self.l) if self.with_entropy else None


def row_stats_from_logits(
    logits: torch.Tensor, token_ids: torch.Tensor, inv_temperature: float, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-token ``logsumexp(z)``, ``z[y]`` and (optionally) entropy, fp32 ``[C]``, of held raw
    logits ``[C, V]`` (fp32, unit column stride), ``z = logits * inv_temperature``: one pass."""
    if logits.stride(-1) != 1:
        raise ValueError("logits must be contiguous in their last dimension")
    state = _RowState(logits.shape[0], logits.device, with_entropy)
    state.update(logits, token_ids.to(torch.int32).contiguous(), 0, inv_temperature)
    return state.result()


def dlogits_from_logits(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    lse: torch.Tensor,
    coef: torch.Tensor,
    inv_temperature: float,
    v_offset: int,
    out_dtype: torch.dtype,
    ent: torch.Tensor | None = None,
    ecoef: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`dlogits` (``ent``/``ecoef`` likewise) from held raw logits ``[C, Vc]`` (fp32; a column
    slice of a wider chunk is fine: any row stride, unit column stride) of vocabulary entries
    ``v_offset ...``; one pass, returns ``[C, Vc]`` in ``out_dtype``."""
    if logits.stride(-1) != 1:
        raise ValueError("logits must be contiguous in their last dimension")
    c, vc = logits.shape
    out = torch.empty((c, vc), device=logits.device, dtype=out_dtype)
    if c == 0 or vc == 0:
        return out
    lse, coef = lse.to(torch.float32).contiguous(), coef.to(torch.float32).contiguous()
    has_entropy = ecoef is not None
    ent, ecoef = _entropy_inputs(ent, ecoef, lse)
    _dlogits_from_logits_kernel[(c,)](
        logits, token_ids.to(torch.int32).contiguous(), lse, coef, ent, ecoef, out, vc, logits.stride(0),
        out.stride(0), int(v_offset), float(inv_temperature), HAS_ENTROPY=has_entropy,
        BLOCK_V=_block_v(vc), num_warps=8,
    )
    return out


def dlogits_cublas(
    hidden: torch.Tensor,
    weight_chunk: torch.Tensor,
    token_ids: torch.Tensor,
    lse: torch.Tensor,
    coef: torch.Tensor,
    inv_temperature: float,
    v_offset: int,
    ent: torch.Tensor | None = None,
    ecoef: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same output as :func:`dlogits`, from an fp32 cuBLAS logits chunk."""
    _check(hidden, weight_chunk)
    z = _logits_f32(hidden, weight_chunk)
    return dlogits_from_logits(z, token_ids, lse, coef, inv_temperature, v_offset, hidden.dtype, ent=ent, ecoef=ecoef)
