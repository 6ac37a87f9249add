"""The Triton logprob kernels (kernels/logprobs_triton.py) against the torch chunked path and the
full-logits reference, on the GPU (marked ``gpu``: skipped where there is no CUDA device), and on
every CPU run under Triton's interpreter at small shapes (the last test).

Reference: float64 on the GPU from the same (upcast) inputs. Tolerances, and why:

* fp32 inputs: Triton dots run in exact fp32 ("ieee"), torch matmuls in fp32 (TF32 off):
  logprobs within 1e-4 absolute, gradients within 1e-5 relative norm.
* bf16 inputs: Triton keeps the fp32 GEMM accumulator as the logit, so its logprobs stay
  within 2e-3 absolute of float64; so does the torch path where torch has an fp32-output
  GEMM (``torch.mm(..., out_dtype=torch.float32)``), else it rounds each raw logit to bf16
  first, as the full path always does (up to |z| * 2^-9 / temperature, |z| up to ~12 here, in
  the target logit and in the logsumexp): within 1e-1. Gradients: D = dL/dlogits is
  rounded to bf16 in every path (as autograd does for a bf16 matmul) and the outputs are
  bf16, so 2e-2 relative norm (METHOD.md: bf16 operands land between 1e-3 and 1e-2).

Each test prints its measured errors (pytest -s) so BENCHMARKS.md can quote them.
"""

import os
import subprocess
import sys

import pytest
import torch

from grpo_ray.config import LOSS_TYPES, GRPOConfig
from grpo_ray.logprobs import full_logprobs, resolve_impl, token_logprobs
from grpo_ray.loss import chunked_grpo_loss, grpo_loss

TOL = {  # dtype: (logp atol triton, logp atol torch/full, grad rel-norm)
    torch.float32: (1e-4, 1e-4, 1e-5),
    torch.bfloat16: (2e-3, 1e-1, 2e-2),
}


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make(n_b, n_t, h, v, dtype, seed=0, weight_grad=True):
    g = torch.Generator(device="cuda").manual_seed(seed)
    hidden = torch.randn(n_b, n_t, h, device="cuda", generator=g).to(dtype).requires_grad_(True)
    weight = (torch.randn(v, h, device="cuda", generator=g) * 3 / h**0.5).to(dtype).requires_grad_(weight_grad)
    ids = torch.randint(0, v, (n_b, n_t), device="cuda", generator=g)
    return hidden, weight, ids


def reference(hidden, weight, ids, temperature, g):
    h64 = hidden.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(weight.requires_grad)
    lp, ent = full_logprobs(h64, w64, ids, temperature, with_entropy=True)
    params = [h64, w64] if weight.requires_grad else [h64]
    grads = torch.autograd.grad((lp * g.double()).sum(), params)
    return lp.detach(), ent, grads


# (B, T, H, V): token counts, hidden sizes and vocabularies that are not multiples of any
# tile or chunk (H=200: the K loop's masked tail), and one aligned shape.
SHAPES = [(3, 333, 200, 5003), (2, 64, 256, 4096)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weight_grad", [True, False])
def test_triton_torch_full_against_float64(dtype, shape, weight_grad):
    hidden, weight, ids = make(*shape, dtype, weight_grad=weight_grad)
    temperature = 0.7
    g = torch.randn(ids.shape, device="cuda")
    g[1] = 0.0  # a fully masked row: zero upstream gradient
    g[0, 100:] = 0.0
    lp_ref, ent_ref, grads_ref = reference(hidden, weight, ids, temperature, g)
    atol_tri, atol_torch, gtol = TOL[dtype]
    params = [hidden, weight] if weight_grad else [hidden]
    from kernels import logprobs_triton as K

    for impl, mode, atol, kw in [
        ("triton", "fused", atol_tri, dict(chunk_size=256, vocab_chunk_size=2048)),  # several chunks each way
        ("triton", "fused", atol_tri, dict()),  # defaults: one token chunk, direct grad_W write
        ("triton", "cublas", atol_tri, dict(chunk_size=256, vocab_chunk_size=2048)),
        ("triton", "cublas", atol_tri, dict()),
        ("torch", None, atol_torch, dict(chunk_size=256, vocab_chunk_size=2048)),
        ("full", None, atol_torch, dict()),
    ]:
        prev = (K.FWD_MODE, K.BWD_MODE)
        if mode:
            K.set_modes(mode, mode)
        try:
            lp, ent = token_logprobs(
                hidden, weight, ids, temperature=temperature, impl=impl, with_entropy=True, **kw
            )
        finally:
            K.set_modes(*prev)
        assert lp.dtype == torch.float32
        if mode:
            K.set_modes(mode, mode)
        try:
            grads = torch.autograd.grad((lp * g).sum(), params)
        finally:
            K.set_modes(*prev)
        err_lp = (lp.double() - lp_ref).abs().max().item()
        err_ent = (ent.double() - ent_ref).abs().max().item()
        err_g = [rel(a, b) for a, b in zip(grads, grads_ref)]
        print(f"\n{impl:6s} {mode} {dtype} {shape} wgrad={weight_grad} {kw}: logp {err_lp:.2e} entropy {err_ent:.2e} grads {err_g}")
        assert err_lp <= atol, (impl, err_lp)
        assert err_ent <= 2 * atol, (impl, err_ent)
        for e in err_g:
            assert e <= gtol, (impl, err_g)
        assert torch.all(grads[0][1] == 0)
        if not weight_grad:
            assert weight.grad is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_grad_and_auto(dtype):
    hidden, weight, ids = make(2, 100, 128, 1000, dtype)
    want = "triton" if dtype == torch.bfloat16 else "torch"
    assert resolve_impl("auto", hidden.device, dtype) == want
    with torch.no_grad():
        a = token_logprobs(hidden, weight, ids, impl="auto")
        b = token_logprobs(hidden, weight, ids, impl=want)
    assert a.grad_fn is None
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])  # the kernel sees logprobs only
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("mode", ["fused", "cublas"])
def test_chunked_grpo_loss_triton_vs_grpo_loss_full(dtype, loss_type, level, mode, triton_mode):
    triton_mode(mode)
    n_b, n_t = 4, 300
    hidden, weight, ids = make(n_b, n_t, 200, 5003, dtype, seed=1)
    mask = torch.ones(n_b, n_t, device="cuda")
    mask[1] = 0
    mask[2, 150:] = 0
    adv = torch.tensor([1.0, -0.5, -1.2, 0.7], device="cuda")
    cfg = GRPOConfig(
        loss_type=loss_type, importance_sampling_level=level, beta=0.04, max_completion_length=n_t,
        vllm_importance_sampling_mode="token_truncate", vllm_importance_sampling_clip_max=2.0,
    )
    with torch.no_grad():
        base = full_logprobs(hidden.double(), weight.double(), ids, 0.7).float()
        old = base + 0.1 * torch.randn_like(base)
        ref = base + 0.1 * torch.randn_like(base)
        samp = old + 0.2 * torch.randn_like(base)
    kw = dict(old_logps=old, ref_logps=ref, sampling_logps=samp, num_items_in_batch=900.0)
    loss, metrics = chunked_grpo_loss(hidden, weight, ids, mask, adv, cfg, temperature=0.7, impl="triton", **kw)
    grads = torch.autograd.grad(loss, [hidden, weight])

    h64 = hidden.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    ref_loss, ref_metrics = grpo_loss(
        full_logprobs(h64, w64, ids, 0.7), old.double(), ref.double(), adv.double(), mask.double(), cfg,
        num_items_in_batch=900.0, sampling_logps=samp.double(),
    )
    ref_grads = torch.autograd.grad(ref_loss, [h64, w64])
    err_loss = abs(loss.item() - ref_loss.item()) / max(abs(ref_loss.item()), 1e-6)
    err_g = [rel(a, b) for a, b in zip(grads, ref_grads)]
    print(f"\nloss {mode} {loss_type}/{level} {dtype}: loss rel {err_loss:.2e} grads {err_g}")
    _, _, gtol = TOL[dtype]
    assert err_loss <= (1e-5 if dtype == torch.float32 else 1e-2)
    for e in err_g:
        assert e <= 2 * gtol
    assert abs(metrics["kl"].item() - ref_metrics["kl"].item()) <= 1e-3


@pytest.fixture
def triton_mode():
    from kernels import logprobs_triton as K

    prev = (K.FWD_MODE, K.BWD_MODE)
    yield lambda mode: K.set_modes(mode, mode)
    K.set_modes(*prev)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "triton-fused", "triton-cublas", "torch"])
def test_peak_memory_is_a_fraction_of_the_logits(impl, triton_mode):
    if impl in ("triton-fused", "triton-cublas"):
        triton_mode(impl.split("-")[1])
    impl = "triton" if impl.startswith("triton") else impl  # plain "triton": the default modes
    n_b, n_t, h, v = 4, 2048, 1024, 65536
    hidden, weight, ids = make(n_b, n_t, h, v, torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    lp = token_logprobs(hidden, weight, ids, impl=impl)
    gh, gw = torch.autograd.grad(lp.sum(), [hidden, weight])
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    logits_fp32 = n_b * n_t * v * 4
    grads_bytes = gh.numel() * 2 + gw.numel() * 2
    print(f"\n{impl}: peak extra {extra / 2**20:.0f} MiB (grads {grads_bytes / 2**20:.0f} MiB) "
          f"vs fp32 logits {logits_fp32 / 2**20:.0f} MiB")
    assert extra < grads_bytes + logits_fp32 / 4  # beyond the gradients: < 1/4 of the fp32 logits


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("weight_grad", [True, False])
@pytest.mark.parametrize("loss_type,level", [("grpo", "token"), ("dapo", "sequence"), ("bnpo", "token"),
                                             ("dr_grpo", "sequence")])
@pytest.mark.parametrize("chunk_size", [600, 250])  # 2 rows of 300 per held chunk; rows longer than the chunk
def test_fused_chunked_grpo_loss_against_float64(dtype, impl, weight_grad, loss_type, level, chunk_size):
    """The fused loss (gradient in forward) on the GPU: loss, metrics and gradients against
    grpo_loss on float64 full-logits logprobs (bf16 grad_W accumulates over 2 row chunks)."""
    n_b, n_t = 4, 300
    hidden, weight, ids = make(n_b, n_t, 200, 5003, dtype, seed=2, weight_grad=weight_grad)
    mask = torch.ones(n_b, n_t, device="cuda")
    mask[1] = 0
    mask[2, 150:] = 0
    adv = torch.tensor([1.0, -0.5, -1.2, 0.7], device="cuda")
    cfg = GRPOConfig(loss_type=loss_type, importance_sampling_level=level, beta=0.04, max_completion_length=n_t)
    with torch.no_grad():
        base = full_logprobs(hidden.double(), weight.double(), ids, 0.7).float()
        old = base + 0.1 * torch.randn_like(base)
        ref = base + 0.1 * torch.randn_like(base)
    kw = dict(old_logps=old, ref_logps=ref, num_items_in_batch=900.0)
    params = [hidden, weight] if weight_grad else [hidden]
    loss, metrics = chunked_grpo_loss(hidden, weight, ids, mask, adv, cfg, temperature=0.7, impl=impl, fused=True,
                                      chunk_size=chunk_size, with_entropy=True, **kw)
    grads = torch.autograd.grad(loss, params)

    h64 = hidden.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(weight_grad)
    lp64, ent64 = full_logprobs(h64, w64, ids, 0.7, with_entropy=True)
    ref_loss, ref_metrics = grpo_loss(lp64, old.double(), ref.double(), adv.double(), mask.double(), cfg,
                                      num_items_in_batch=900.0, entropies=ent64)
    ref_grads = torch.autograd.grad(ref_loss, [h64, w64] if weight_grad else [h64])
    err_loss = abs(loss.item() - ref_loss.item()) / max(abs(ref_loss.item()), 1e-6)
    err_g = [rel(a, b) for a, b in zip(grads, ref_grads)]
    print(f"\nfused {impl} {dtype} {loss_type}/{level} chunk {chunk_size} wgrad={weight_grad}: "
          f"loss rel {err_loss:.2e} grads {err_g}")
    _, atol_torch, gtol = TOL[dtype]
    assert err_loss <= (1e-5 if dtype == torch.float32 else 1e-2)
    for e in err_g:
        assert e <= 2 * gtol
    assert abs(metrics["entropy"].item() - ref_metrics["entropy"].item()) <= atol_torch
    assert abs(metrics["kl"].item() - ref_metrics["kl"].item()) <= 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl,mode,fused,chunk_size", [
    ("triton", "fused", False, 256), ("triton", "cublas", False, 256),  # token_logprobs' backward, both D kernels
    ("triton", None, True, 600), ("triton", None, True, 250),  # fused: held rows, rows longer than the chunk
    ("torch", None, True, 600), ("torch", None, False, 256),
])
def test_entropy_bonus_against_float64(dtype, impl, mode, fused, chunk_size, triton_mode):
    """An entropy bonus (its gradient through the entropies, dH/dz = -p (log p + H) / tau) on every
    GPU path: loss and gradients against grpo_loss on float64 full-logits logprobs and entropies."""
    if mode:
        triton_mode(mode)
    n_b, n_t = 4, 300
    hidden, weight, ids = make(n_b, n_t, 200, 5003, dtype, seed=3)
    mask = torch.ones(n_b, n_t, device="cuda")
    mask[1] = 0
    mask[2, 150:] = 0
    adv = torch.tensor([1.0, -0.5, -1.2, 0.7], device="cuda")
    cfg = GRPOConfig(loss_type="dapo", entropy_coef=0.5, max_completion_length=n_t)
    with torch.no_grad():
        old = full_logprobs(hidden.double(), weight.double(), ids, 0.7).float()
        old += 0.1 * torch.randn(n_b, n_t, device="cuda")
    loss, metrics = chunked_grpo_loss(hidden, weight, ids, mask, adv, cfg, temperature=0.7, impl=impl, fused=fused,
                                      chunk_size=chunk_size, old_logps=old, num_items_in_batch=900.0)
    grads = torch.autograd.grad(loss, [hidden, weight])

    h64 = hidden.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    lp64, ent64 = full_logprobs(h64, w64, ids, 0.7, with_entropy=True)
    ref_loss, _ = grpo_loss(lp64, old.double(), None, adv.double(), mask.double(), cfg, num_items_in_batch=900.0,
                            entropies=ent64)
    ref_grads = torch.autograd.grad(ref_loss, [h64, w64], retain_graph=True)
    no_bonus = torch.autograd.grad(ref_loss + 0.5 * (ent64 * mask).sum() / mask.sum(), [h64])[0]
    err_loss = abs(loss.item() - ref_loss.item()) / max(abs(ref_loss.item()), 1e-6)
    err_g = [rel(a, b) for a, b in zip(grads, ref_grads)]
    print(f"\nentropy bonus {impl} {mode} fused={fused} chunk {chunk_size} {dtype}: loss rel {err_loss:.2e} "
          f"grads {err_g}; the bonus's share of grad_hidden {rel(ref_grads[0], no_bonus):.2e}")
    _, _, gtol = TOL[dtype]
    assert err_loss <= (1e-5 if dtype == torch.float32 else 1e-2)
    for e in err_g:
        assert e <= 2 * gtol
    assert rel(ref_grads[0], no_bonus) > 20 * gtol  # the bonus's gradient is no rounding-level detail here


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("weight_grad", [True, False])
def test_fused_loss_peak_memory_is_one_chunk_of_logits(impl, weight_grad):
    """Beyond the gradients, the fused loss holds about one chunk's fp32 logits ``[C, V]``."""
    n_b, n_t, h, v = 4, 2048, 1024, 65536
    hidden, weight, ids = make(n_b, n_t, h, v, torch.bfloat16, weight_grad=weight_grad)
    params = [hidden, weight] if weight_grad else [hidden]
    cfg = GRPOConfig(loss_type="dapo", max_completion_length=n_t)
    mask, adv = torch.ones(n_b, n_t, device="cuda"), torch.randn(n_b, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss, _ = chunked_grpo_loss(hidden, weight, ids, mask, adv, cfg, impl=impl, fused=True, chunk_size=n_t)
    grads = torch.autograd.grad(loss, params)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    chunk_logits = n_t * v * 4
    grads_bytes = sum(g.numel() * 2 for g in grads)
    print(f"\nfused {impl} wgrad={weight_grad}: peak extra {extra / 2**20:.0f} MiB (grads {grads_bytes / 2**20:.0f} "
          f"MiB, one chunk's fp32 logits {chunk_logits / 2**20:.0f} MiB)")
    # torch: the logits chunk, plus per-slice temporaries and (bf16) the D slices; triton: the chunk alone
    assert extra < grads_bytes + chunk_logits * (1.5 if impl == "torch" else 1.15) + 64 * 2**20


# --- CPU: the kernels under Triton's interpreter ------------------------------------------------
#
# TRITON_INTERPRET must be set before triton is imported, so the kernels run in a child process
# (this pytest process and its other tests never see the variable). triton is a dev dependency
# (>= 3.7: the 3.6 interpreter fails on numpy 2.4); without it this test fails, not skips.
# About 10-20 s on the 2-core CI box.

INTERP = r"""
import torch
from kernels import logprobs_triton as K
from grpo_ray.logprobs import _torch_forward, _torch_dlogits
torch.manual_seed(0)
for kind in ("fwd", "bwd"):
    K.set_config(kind, 32, (16, 32, 16, 4, 2))
K.set_num_splits(3)
# one small shape with a tail in every dimension: 37 tokens (chunks and BLOCK_M of 16), H = 40
# (BLOCK_K 16), V = 300 (BLOCK_N 32, vocabulary chunks of 64, 3 splits)
n, h, v = 37, 40, 300
x, w, y = torch.randn(n, h), torch.randn(v, h) * 0.3, torch.randint(0, v, (n,))
lse, tgt, ent = K.lse_forward(x, w, y, 1 / 0.7, True, num_splits=3)
lse2, tgt2, ent2 = _torch_forward(x.double(), w.double(), y, 1 / 0.7, 16, 64, True)
assert (lse - lse2).abs().max() < 1e-4 and (tgt - tgt2).abs().max() < 1e-4 and (ent - ent2).abs().max() < 1e-4
coef = torch.randn(n)
d = K.dlogits(x, w[64:214], y, lse, coef, 1 / 0.7, 64)
d2 = _torch_dlogits(x.double(), w[64:214].double(), y, lse2, coef.double(), 1 / 0.7, 64)
assert (d.double() - d2).abs().max() < 1e-5
# "cublas" mode: GEMM in torch, the softmax passes in Triton.
lse3, tgt3, ent3 = K.lse_forward_cublas(x, w, y, 1 / 0.7, True, chunk_size=16, vocab_chunk_size=64)
assert (lse3 - lse2).abs().max() < 1e-4 and (tgt3 - tgt2).abs().max() < 1e-4 and (ent3 - ent2).abs().max() < 1e-4
lse4, tgt4, ent4 = K.lse_forward_cublas(x, w, y, 1 / 0.7, False, chunk_size=4096, vocab_chunk_size=8192)
assert ent4 is None and (lse4 - lse2).abs().max() < 1e-4 and (tgt4 - tgt2).abs().max() < 1e-4
d3 = K.dlogits_cublas(x, w[64:214], y, lse, coef, 1 / 0.7, 64)
assert (d3.double() - d2).abs().max() < 1e-5
# D with the entropy's gradient too (ecoef = dL/dH / tau), both kernels.
ecoef = torch.randn(n)
d2e = _torch_dlogits(x.double(), w[64:214].double(), y, lse2, coef.double(), 1 / 0.7, 64, ent2, ecoef.double())
assert (d2e - d2).abs().max() > 1e-2
for de in (K.dlogits(x, w[64:214], y, lse, coef, 1 / 0.7, 64, ent=ent, ecoef=ecoef),
           K.dlogits_cublas(x, w[64:214], y, lse, coef, 1 / 0.7, 64, ent=ent, ecoef=ecoef)):
    assert (de.double() - d2e).abs().max() < 1e-5
# The autograd path with the triton kernels (resolve_impl refuses CPU, so call it directly).
from grpo_ray.logprobs import _ChunkedLogprobs, full_logprobs
x = torch.randn(50, 32, requires_grad=True)
w = (torch.randn(301, 32) * 0.3).requires_grad_(True)
y = torch.randint(0, 301, (50,))
g = torch.randn(50)
g[7:20] = 0
g_ent = torch.randn(50)
g_ent[7:12] = 0  # rows 12-19: a gradient through the entropy only
ref, ref_ent = full_logprobs(x.double(), w.double(), y, 0.7, with_entropy=True)
# "fused" mode through the logprobs only, "cublas" mode through the entropies too
objectives = {"fused": lambda lp, e: (lp * g.to(lp.dtype)).sum(),
              "cublas": lambda lp, e: (lp * g.to(lp.dtype)).sum() + (e * g_ent.to(e.dtype)).sum()}
for mode, objective in objectives.items():
    rx, rw = torch.autograd.grad(objective(ref, ref_ent), [x, w], retain_graph=True)
    K.set_modes(mode, mode)
    lp, ent = _ChunkedLogprobs.apply(x, w, y, 1 / 0.7, 16, 64, "triton", True)
    gx, gw = torch.autograd.grad(objective(lp, ent), [x, w])
    assert (lp.double() - ref).abs().max() < 1e-4
    assert (gx.double() - rx).abs().max() < 1e-4 and (gw.double() - rw).abs().max() < 1e-4
# The fused loss (gradient in forward) with the Triton row passes over held logits, and with rows
# longer than the chunk (two passes through the kernels above), against float64 autograd; the
# loss has an entropy term (its gradient folded into each chunk's D).
from grpo_ray.logprobs import _FusedLinearLoss
b, t = 5, 10
y = torch.randint(0, 301, (b * t,))
c, c_ent = torch.randn(b, t), torch.randn(b, t)
def fn(rows, lp, ent):  # a sequence-level term, and the entropies
    entropy_term = 0.3 * (ent * c_ent[rows].to(ent.dtype)).sum()
    return (lp * c[rows].to(lp.dtype)).sum() + 0.1 * (lp.sum(-1) ** 2).sum() + entropy_term
ref, ref_ent = full_logprobs(x.double(), w.double(), y, 0.7, with_entropy=True)
ref = ref.view(b, t)
ref_loss = fn(slice(0, b), ref, ref_ent.view(b, t))
rx, rw = torch.autograd.grad(ref_loss, [x, w])
# chunk 20: 2 rows per held chunk (3 chunks), vocabulary slices of 64 (offsets 0..256); chunk 7 < t:
# every row in two passes (the kernels above, "cublas" mode: the cheaper one to interpret).
K.set_modes("cublas", "cublas")
for chunk in (20, 7):
    loss, lp, ent = _FusedLinearLoss.apply(x, w, y, fn, b, t, 1 / 0.7, chunk, 64, "triton", True)
    gx, gw = torch.autograd.grad(loss, [x, w])
    assert abs(loss.item() - ref_loss.item()) < 1e-3 * max(1.0, abs(ref_loss.item()))
    assert (lp.view(b, t).double() - ref).abs().max() < 1e-4 and (ent.double() - ref_ent.detach()).abs().max() < 1e-4
    scale = max(rx.abs().max().item(), rw.abs().max().item())
    assert (gx.double() - rx).abs().max() < 1e-4 * scale and (gw.double() - rw).abs().max() < 1e-4 * scale
print("ok")
"""


def test_kernels_under_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), root]))
    out = subprocess.run([sys.executable, "-c", INTERP], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
