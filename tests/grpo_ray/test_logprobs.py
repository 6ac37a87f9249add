"""grpo_ray.logprobs on CPU: the chunked torch implementation against the full-logits reference
in float64 (values, entropies, gradients to hidden and LM head through the logprobs and through
the entropies, gradcheck), at sizes that are not multiples of the chunks, with temperature != 1,
frozen and trainable heads, zero-gradient (masked) rows and the no_grad path. GPU / Triton
parity lives in tests/kernels."""

import pytest
import torch

from grpo_ray.logprobs import full_logprobs, resolve_impl, token_logprobs

D = torch.float64


def make(b=3, t=13, h=16, v=101, dtype=D, seed=0, weight_grad=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g, dtype=D).to(dtype).requires_grad_(True)
    weight = (torch.randn(v, h, generator=g, dtype=D) / h**0.5 * 3).to(dtype).requires_grad_(weight_grad)
    ids = torch.randint(0, v, (b, t), generator=g)
    return hidden, weight, ids


# chunk_size 5 tokens over 39 tokens, vocab chunks of 16/7 over 101 entries: ragged last chunks.
CHUNKS = [(5, 16), (7, 7), (4096, 8192), (1, 1)]


@pytest.mark.parametrize("chunk_size,vocab_chunk", CHUNKS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_entropy_and_grads_match_full(chunk_size, vocab_chunk, temperature):
    hidden, weight, ids = make()
    ref, ref_ent = full_logprobs(hidden, weight, ids, temperature, with_entropy=True)
    out, ent = token_logprobs(
        hidden, weight, ids, temperature=temperature, impl="torch", with_entropy=True,
        chunk_size=chunk_size, vocab_chunk_size=vocab_chunk,
    )
    assert out.shape == ids.shape and out.dtype == D
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=1e-12)
    gen = torch.Generator().manual_seed(1)
    g, g_ent = torch.randn(ids.shape, dtype=D, generator=gen), torch.randn(ids.shape, dtype=D, generator=gen)
    # through the logprobs only (the entropies unused), through both, through the entropies only
    for objective in (lambda lp, e: (lp * g).sum(), lambda lp, e: (lp * g + e * g_ent).sum(),
                      lambda lp, e: (e * g_ent).sum()):
        want = torch.autograd.grad(objective(ref, ref_ent), [hidden, weight], retain_graph=True)
        got = torch.autograd.grad(objective(out, ent), [hidden, weight], retain_graph=True)
        for a, b in zip(got, want):
            assert b.abs().max() > 1e-3
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", ["torch", "full"])
def test_gradcheck(impl):
    hidden, weight, ids = make(b=2, t=5, h=6, v=23)
    # logprobs and entropies, each output's gradient checked: the entropy's is dH/dz = -p (log p + H) / tau
    kw = dict(temperature=0.7, impl=impl, chunk_size=3, vocab_chunk_size=5, with_entropy=True)
    fn = lambda h, w: token_logprobs(h, w, ids, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (hidden, weight))


def test_frozen_head_gets_no_grad_and_same_hidden_grad():
    hidden, weight, ids = make(weight_grad=False)
    out = token_logprobs(hidden, weight, ids, impl="torch", chunk_size=5, vocab_chunk_size=16)
    out.sum().backward()
    assert weight.grad is None
    h2 = hidden.detach().clone().requires_grad_(True)
    full_logprobs(h2, weight, ids).sum().backward()
    torch.testing.assert_close(hidden.grad, h2.grad, rtol=0, atol=1e-12)


def test_zero_gradient_rows_are_skipped_exactly():
    # Rows with upstream gradient exactly 0 (masked padding) are dropped from backward.
    hidden, weight, ids = make()
    mask = torch.ones(ids.shape, dtype=D)
    mask[1] = 0.0  # a fully masked completion
    mask[2, 7:] = 0.0
    g = torch.randn(ids.shape, dtype=D) * mask
    out = token_logprobs(hidden, weight, ids, impl="torch", chunk_size=4, vocab_chunk_size=16)
    gh, gw = torch.autograd.grad((out * g).sum(), [hidden, weight], retain_graph=True)
    gh_ref, gw_ref = torch.autograd.grad((full_logprobs(hidden, weight, ids) * g).sum(), [hidden, weight])
    assert torch.all(gh[1] == 0) and torch.all(gh[2, 7:] == 0)
    torch.testing.assert_close(gh, gh_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(gw, gw_ref, rtol=0, atol=1e-12)
    # All-zero upstream gradient: zero grads, no error.
    gh0, gw0 = torch.autograd.grad((out * 0.0).sum(), [hidden, weight])
    assert torch.all(gh0 == 0) and torch.all(gw0 == 0)
    # A token with a gradient through its entropy only is not skipped.
    out, ent = token_logprobs(hidden, weight, ids, impl="torch", chunk_size=4, vocab_chunk_size=16, with_entropy=True)
    g_ent = torch.zeros(ids.shape, dtype=D)
    g_ent[1, 3] = 1.0
    lp_ref, ent_ref = full_logprobs(hidden, weight, ids, with_entropy=True)
    got = torch.autograd.grad((out * g + ent * g_ent).sum(), [hidden, weight])
    want = torch.autograd.grad((lp_ref * g + ent_ref * g_ent).sum(), [hidden, weight])
    assert got[0][1, 3].abs().max() > 0 and torch.all(got[0][1, :3] == 0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_no_grad_path_saves_nothing_and_matches():
    hidden, weight, ids = make()
    with torch.no_grad():
        out = token_logprobs(hidden, weight, ids, impl="torch", chunk_size=5, vocab_chunk_size=16)
    assert not out.requires_grad and out.grad_fn is None
    torch.testing.assert_close(out, full_logprobs(hidden, weight, ids).detach(), rtol=0, atol=1e-12)
    # Inputs that need no grad take the same path with grad enabled.
    out2 = token_logprobs(hidden.detach(), weight.detach(), ids, impl="torch")
    assert out2.grad_fn is None
    torch.testing.assert_close(out2, out, rtol=0, atol=1e-12)


def test_float32_and_bfloat16_return_float32():
    hidden, weight, ids = make()
    ref = full_logprobs(hidden, weight, ids).detach()
    out32 = token_logprobs(hidden.float(), weight.float(), ids, impl="torch", chunk_size=5, vocab_chunk_size=16)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), ref, rtol=0, atol=1e-4)
    hb, wb = hidden.detach().bfloat16(), weight.detach().bfloat16()
    outb = token_logprobs(hb, wb, ids, impl="torch", chunk_size=5, vocab_chunk_size=16)
    assert outb.dtype == torch.float32
    # Same bf16 logits as the full path, so the same numbers up to fp32 summation order.
    torch.testing.assert_close(outb, full_logprobs(hb, wb, ids), rtol=0, atol=1e-4)


def test_hidden_may_be_a_non_contiguous_view():
    hidden, weight, ids = make(t=20)
    view = hidden[:, 3:16]  # like hidden[:, P-1:P+T-1] in the learner
    ids = ids[:, 3:16]
    out = token_logprobs(view, weight, ids, impl="torch", chunk_size=5, vocab_chunk_size=16)
    ref = full_logprobs(view, weight, ids)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    gh, = torch.autograd.grad(out.sum(), [hidden])
    gh_ref, = torch.autograd.grad(ref.sum(), [hidden])
    torch.testing.assert_close(gh, gh_ref, rtol=0, atol=1e-12)
    assert torch.all(gh[:, :3] == 0) and torch.all(gh[:, 16:] == 0)


def test_impl_resolution_and_errors():
    cpu = torch.device("cpu")
    assert resolve_impl("auto", cpu, torch.float32) == "torch"
    assert resolve_impl("full", cpu, torch.float32) == "full"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_impl("triton", cpu, torch.float32)
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve_impl("fast", cpu, torch.float32)
    hidden, weight, ids = make()
    with pytest.raises(ValueError, match=r"token_ids must lie in \[0, 101\)"):
        token_logprobs(hidden, weight, ids.clone().fill_(101), impl="torch")
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(hidden, weight, ids, temperature=0.0)
    with pytest.raises(ValueError, match="must match"):
        token_logprobs(hidden, weight, ids[:, :-1])
    # 'full' and 'auto' agree.
    torch.testing.assert_close(
        token_logprobs(hidden, weight, ids, impl="auto"), token_logprobs(hidden, weight, ids, impl="full"),
        rtol=0, atol=1e-12,
    )
