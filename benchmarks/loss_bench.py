"""GRPO loss from hidden states: forward+backward time, peak memory and TFLOPS, several ways.

    python benchmarks/loss_bench.py [--sweep-configs] [--sweep-t] [--out results.json]

Implementations, on the same inputs and the same loss (dapo, beta 0, epsilon 0.2, off-policy
old logprobs, temperature 1, bf16 hidden states and LM head, all tokens unmasked):

* naive:  full [B, T, V] logits, log_softmax, gather, then grpo_loss
          (``chunked_grpo_loss(impl="full")``).
* torch:  ``chunked_grpo_loss(impl="torch", fused=False)`` (logprobs chunked over tokens and
          vocabulary, backward recomputing the logits; cuBLAS + unfused elementwise).
* triton: ``chunked_grpo_loss(impl="triton", fused=False)`` (the same with fused Triton
          kernels + cuBLAS gradient GEMMs); triton-fused / triton-cublas: its kernel modes.
* fusedloss: ``chunked_grpo_loss(impl="triton", fused=True)``: the gradient formed in the
          forward pass per chunk of whole rows (``fused_linear_loss``: one cuBLAS GEMM to the
          chunk's fp32 logits, Triton row passes for logsumexp and D, cuBLAS gradient GEMMs);
          fusedloss-torch: the same with torch elementwise ops.
* liger:  ``LigerFusedLinearGRPOLoss`` (liger-kernel, loss_type dapo, beta 0,
          use_ref_model False, compiled False: only its small loss math is compiled by default).

Time: median of ``--reps`` CUDA-event-timed forward+backward calls after ``--warmup`` calls.
Memory: ``max_memory_allocated`` during one forward+backward minus what was allocated before
it (the inputs), so it includes the gradients returned (grad_W alone is V*H*2 bytes).
FLOPs (N = B*T): "model" = 6*N*H*V with a trainable head (fwd logits 2NHV, grad_hidden 2NHV,
grad_W 2NHV; 4*N*H*V frozen), the same count for every implementation; "executed" adds the
logits recompute in backward (2NHV) for the implementations that recompute (torch, triton*
and Liger's); naive and fusedloss* execute the model count.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo_ray.config import GRPOConfig  # noqa: E402
from grpo_ray.loss import chunked_grpo_loss  # noqa: E402

H100_BF16_PEAK = 989.0  # TFLOPS, dense, SXM datasheet
DEVICE = "cuda"  # the CPU smoke run of this script (tests/kernels) swaps in "cpu"


def make_inputs(b, t, h, v, dtype=torch.bfloat16, weight_grad=True, seed=0, pad=False):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    hidden = torch.randn(b, t, h, device=DEVICE, generator=g, dtype=torch.float32).to(dtype)
    weight = (torch.randn(v, h, device=DEVICE, generator=g, dtype=torch.float32) * (2.0 / h**0.5)).to(dtype)
    hidden.requires_grad_(True)
    weight.requires_grad_(weight_grad)
    ids = torch.randint(0, v, (b, t), device=DEVICE, generator=g)
    mask = torch.ones(b, t, device=DEVICE)
    adv = torch.randn(b, device=DEVICE, generator=g)
    # Old logprobs within ~2% of the current ones: every ratio stays inside the clip range, so
    # every token has a non-zero gradient and the chunked implementations (which skip tokens
    # whose upstream gradient is exactly 0) do all the work the FLOP counts assume.
    with torch.no_grad():
        from grpo_ray.logprobs import token_logprobs

        cur = token_logprobs(hidden, weight, ids, impl="torch")
    old = cur + 0.02 * torch.randn(b, t, device=DEVICE, generator=g)
    if pad:
        lengths = torch.randint(1, t + 1, (b,), device=DEVICE, generator=g)
        mask = (torch.arange(t, device=DEVICE)[None, :] < lengths[:, None]).float()
    return dict(hidden=hidden, weight=weight, ids=ids, mask=mask, adv=adv, old=old)


def make_fn(impl, inp, config, **kw):
    params = [inp["hidden"]] + ([inp["weight"]] if inp["weight"].requires_grad else [])
    if impl in ("liger", "liger-compiled"):
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        mod = LigerFusedLinearGRPOLoss(
            beta=0.0, use_ref_model=False, compiled=impl == "liger-compiled", epsilon_low=config.epsilon,
            epsilon_high=config.epsilon_high_value, loss_type=config.loss_type, temperature=1.0,
        )

        def fn():
            loss, _ = mod(inp["hidden"], inp["weight"], inp["ids"], inp["mask"], inp["adv"],
                          old_per_token_logps=inp["old"])
            return loss, torch.autograd.grad(loss, params)
    else:
        modes = TRITON_MODES.get(impl)
        fused = impl in FUSED_LOSS
        impl = FUSED_LOSS.get(impl, "triton" if modes else impl)

        def fn():
            if modes:
                from kernels import logprobs_triton as K

                K.set_modes(*modes)
            loss, _ = chunked_grpo_loss(
                inp["hidden"], inp["weight"], inp["ids"], inp["mask"], inp["adv"], config,
                old_logps=inp["old"], impl=impl, fused=fused, **kw,
            )
            return loss, torch.autograd.grad(loss, params)
    return fn


# Triton variants: (forward mode, backward mode); see kernels/logprobs_triton.py.
# "triton" is the default (fused forward, cuBLAS + fused-pass backward).
TRITON_MODES = {
    "triton": ("fused", "cublas"),
    "triton-fused": ("fused", "fused"),
    "triton-cublas": ("cublas", "cublas"),
}
# The gradient-in-forward loss (chunked_grpo_loss(fused=True)): label -> impl.
FUSED_LOSS = {"fusedloss": "triton", "fusedloss-torch": "torch"}
# Rows that execute exactly the model's FLOPs (no logits recompute).
NO_RECOMPUTE = ("full", *FUSED_LOSS)


def measure(fn, warmup, reps):
    """(median ms, all ms, peak extra bytes, (loss, grads) of the last call)."""
    for _ in range(warmup):
        out = fn()
        del out
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        out = fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
        if _ < reps - 1:
            del out
    return statistics.median(times), times, peak, out


def flops(b, t, h, v, weight_grad):
    n = b * t
    model = (6 if weight_grad else 4) * n * h * v
    return model, model + 2 * n * h * v  # executed by the impls that recompute the logits in backward


def run_case(name, b, t, h, v, impls, warmup, reps, weight_grad=True, check=True, kw_by_impl=None, pad=False,
             entropy_coef=0.0):
    config = GRPOConfig(loss_type="dapo", beta=0.0, epsilon=0.2, max_completion_length=t, entropy_coef=entropy_coef)
    inp = make_inputs(b, t, h, v, weight_grad=weight_grad, pad=pad)
    model_fl, exec_fl = flops(b, t, h, v, weight_grad)
    rows, outs = [], {}
    for impl in impls:
        label = impl
        kw = (kw_by_impl or {}).get(impl, {})
        tf32 = False
        if impl == "liger+tf32":
            impl, tf32 = "liger", True
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            med, times, peak, out = measure(make_fn(impl, inp, config, **kw), warmup, reps)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            rows.append(dict(case=name, impl=label, b=b, t=t, h=h, v=v, weight_grad=weight_grad, oom=True))
            print(f"{name:10s} {label:11s} OOM", flush=True)
            continue
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
        ex = model_fl if label in NO_RECOMPUTE else exec_fl
        row = dict(
            case=name, impl=label, b=b, t=t, h=h, v=v, weight_grad=weight_grad, kw=str(kw),
            ms=med, ms_all=[round(x, 3) for x in times], peak_gib=peak / 2**30,
            active=float((out[1][0].detach().abs().amax(-1) != 0).float().mean()),
            model_tflops=model_fl / med / 1e9, exec_tflops=ex / med / 1e9, loss=float(out[0].detach()),
        )
        rows.append(row)
        if check:
            outs[label] = (out[0].detach().float(), [g.detach() for g in out[1]])
        del out
        print(f"{name:10s} {label:11s} {med:9.2f} ms  peak {peak / 2**30:7.2f} GiB  "
              f"model {row['model_tflops']:6.1f} TFLOPS  executed {row['exec_tflops']:6.1f}  "
              f"loss {row['loss']:.6f}  tokens with grad {row['active']:.3f}  times {row['ms_all']}", flush=True)
        torch.cuda.empty_cache()
    if check and "full" in outs:
        ref_loss, ref_grads = outs["full"]
        for label, (loss, grads) in outs.items():
            errs = [((g.float() - r.float()).norm() / r.float().norm()).item() for g, r in zip(grads, ref_grads)]
            rel = abs(loss.item() - ref_loss.item()) / max(abs(ref_loss.item()), 1e-12)
            print(f"   parity vs naive: {label:11s} loss rel {rel:.2e}  grad rel-norm {['%.2e' % e for e in errs]}")
            for r in rows:
                if r["impl"] == label and not r.get("oom"):
                    r["loss_rel_vs_naive"], r["grad_rel_vs_naive"] = rel, errs
    del inp, outs
    torch.cuda.empty_cache()
    return rows


def gemm_ceiling():
    """Measured bf16 GEMM rate of this card (cuBLAS), for the shapes that dominate here."""
    res = {}
    for m, n, k in [(8192, 8192, 8192), (4096, 4096, 8192), (16384, 8192, 4096)]:
        a = torch.randn(m, k, device=DEVICE, dtype=torch.bfloat16)
        bb = torch.randn(k, n, device=DEVICE, dtype=torch.bfloat16)
        for _ in range(3):
            a @ bb
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(10):
            a @ bb
        e.record()
        torch.cuda.synchronize()
        ms = s.elapsed_time(e) / 10
        res[f"{m}x{n}x{k}"] = 2 * m * n * k / ms / 1e9
        del a, bb
    return res


def sweep_configs(b, t, h, v):
    """Time the two Triton kernels alone at one shape for a few tile configs."""
    from kernels import logprobs_triton as K

    inp = make_inputs(b, t, h, v)
    x = inp["hidden"].detach().reshape(-1, h)
    w = inp["weight"].detach()
    y = inp["ids"].reshape(-1)
    n = x.shape[0]
    res = {"fwd": [], "bwd": []}

    def bench(f, reps=10):
        f()
        torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            f()
            e.record()
            torch.cuda.synchronize()
            ts.append(s.elapsed_time(e))
        return statistics.median(ts)

    cands = [(128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 256, 64, 8, 4)]
    lse = None
    for cfg in cands:
        for splits in (8, 33):
            K.set_config("fwd", 16, cfg)
            try:
                t0 = time.time()
                ms = bench(lambda: K.lse_forward(x, w, y, 1.0, False, num_splits=splits))
                lse = K.lse_forward(x, w, y, 1.0, False)[0]
                tf = 2 * n * h * v / ms / 1e9
                res["fwd"].append(dict(cfg=cfg, splits=splits, ms=ms, tflops=tf, wall_s=time.time() - t0))
                print(f"fwd {cfg} splits={splits}: {ms:.2f} ms {tf:.0f} TFLOPS (compile+bench {time.time() - t0:.1f}s)", flush=True)
            except Exception as exc:  # a config that does not compile / fit
                res["fwd"].append(dict(cfg=cfg, splits=splits, error=repr(exc)[:200]))
                print(f"fwd {cfg}: failed {exc!r}"[:300], flush=True)
    K.set_config("fwd", 16, None)
    coef = torch.randn(n, device=DEVICE)
    vc = 8192
    for c in (4096, 16384):
        out = torch.empty((c, vc), device=DEVICE, dtype=x.dtype)
        for cfg in cands:
            K.set_config("bwd", 16, cfg)
            try:
                t0 = time.time()
                ms = bench(lambda: K.dlogits(x[:c], w[:vc], y[:c], lse[:c], coef[:c], 1.0, 0, out=out))
                tf = 2 * c * h * vc / ms / 1e9
                res["bwd"].append(dict(cfg=cfg, tokens=c, vocab=vc, ms=ms, tflops=tf))
                print(f"dlogits C={c} Vc={vc} {cfg}: {ms:.3f} ms {tf:.0f} TFLOPS (compile+bench {time.time() - t0:.1f}s)", flush=True)
            except Exception as exc:
                res["bwd"].append(dict(cfg=cfg, tokens=c, error=repr(exc)[:200]))
                print(f"dlogits {cfg}: failed {exc!r}"[:300], flush=True)
    K.set_config("bwd", 16, None)
    return res


def forward_only(b, t, h, v, reps=5):
    """The no_grad forward (old/reference logprobs) alone, per implementation."""
    from grpo_ray.logprobs import token_logprobs
    from kernels import logprobs_triton as K

    inp = make_inputs(b, t, h, v)
    res = {}
    for label, impl, modes in [("torch", "torch", None), ("triton (fused fwd)", "triton", ("fused", "fused")),
                               ("triton-cublas", "triton", ("cublas", "cublas"))]:
        if modes:
            K.set_modes(*modes)

        def f():
            with torch.no_grad():
                return token_logprobs(inp["hidden"], inp["weight"], inp["ids"], impl=impl)

        med, _, peak, _ = measure(f, 1, reps)
        res[label] = dict(ms=med, tflops=2 * b * t * h * v / med / 1e9, peak_gib=peak / 2**30)
        print(f"forward only {label:18s} {med:7.2f} ms {res[label]['tflops']:5.0f} TFLOPS peak {peak / 2**30:.2f} GiB",
              flush=True)
    return res


def best(entries):
    ok = [e for e in entries if "ms" in e]
    return min(ok, key=lambda e: e["ms"]) if ok else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sweep-configs", action="store_true", help="time Triton tile configs first and use the best")
    ap.add_argument("--sweep-t", action="store_true", help="memory/time over T at B=8, H=4096")
    ap.add_argument("--sweep-chunks", action="store_true",
                    help="triton and fusedloss at the large shape over chunk sizes")
    ap.add_argument("--lora", action="store_true", help="also the frozen-head (LoRA) case at the large shape")
    ap.add_argument("--pad", action="store_true", help="also random completion lengths (~half padding)")
    ap.add_argument("--breakdown", action="store_true", help="time the forward alone (no_grad) per variant")
    ap.add_argument("--skip-liger", action="store_true")
    ap.add_argument("--impls", default=None,
                    help="comma list replacing the default rows (full, torch, triton*, fusedloss, fusedloss-torch, "
                         "liger, liger+tf32; "
                         "also liger-compiled = Liger's default compiled=True)")
    ap.add_argument("--entropy-coef", type=float, default=None,
                    help="also the large case with an entropy bonus of this coefficient (its gradient through "
                         "the entropies) on those of full, torch, triton and fusedloss that run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import triton

    from grpo_ray import logprobs as LP
    from kernels import logprobs_triton as K

    info = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
        command=" ".join(sys.argv),
    )
    try:
        import liger_kernel  # noqa: F401
        from importlib.metadata import version

        info["liger_kernel"] = version("liger-kernel")
    except Exception as exc:
        info["liger_kernel"] = f"unavailable: {exc!r}"
        args.skip_liger = True
    try:
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        pass
    print(json.dumps(info, indent=1), flush=True)
    result = dict(info=info, rows=[])
    result["gemm_ceiling_tflops"] = gemm_ceiling()
    print("cuBLAS bf16 GEMM ceiling (TFLOPS):", {k: round(x) for k, x in result["gemm_ceiling_tflops"].items()}, flush=True)

    if args.sweep_configs:
        sw = sweep_configs(16, 1024, 4096, 151936)
        result["config_sweep"] = sw
        bf, bb = best(sw["fwd"]), best([e for e in sw["bwd"] if e.get("tokens") == 4096])
        print("best dlogits config at 16384 tokens:", best([e for e in sw["bwd"] if e.get("tokens") == 16384]))
        if bf:
            K.set_config("fwd", 16, bf["cfg"])
            K.set_num_splits(bf["splits"])
            print("using fwd config", bf, flush=True)
        if bb:
            K.set_config("bwd", 16, bb["cfg"])
            print("using bwd config", bb, flush=True)
        result["configs_used"] = dict(fwd=bf, bwd=bb)

    triton_impls = ["triton", "triton-fused", "triton-cublas"]
    print("kernel default modes:", (K.FWD_MODE, K.BWD_MODE), "configs:", K.get_config("fwd", torch.bfloat16),
          K.get_config("bwd", torch.bfloat16), flush=True)
    assert (K.FWD_MODE, K.BWD_MODE) == TRITON_MODES["triton"]
    impls = ["full", "torch"] + triton_impls + list(FUSED_LOSS) + ([] if args.skip_liger else ["liger", "liger+tf32"])
    if args.impls:
        impls = args.impls.split(",")
    rows = result["rows"]
    rows += run_case("large", 16, 1024, 4096, 151936, impls, args.warmup, args.reps)
    rows += run_case("small", 8, 512, 1536, 151936, impls, args.warmup, args.reps)
    result["acc_mm_mode"] = LP._ACC_MM_MODE
    print("fp32 accumulation GEMM mode:", LP._ACC_MM_MODE, flush=True)
    if args.lora:
        rows += run_case("large-lora", 16, 1024, 4096, 151936, [i for i in impls if i != "liger+tf32"],
                         1, 3, weight_grad=False)
    if args.entropy_coef is not None:
        with_bonus = [i for i in ("full", "torch", "triton", "fusedloss") if i in impls]
        rows += run_case("large-entropy", 16, 1024, 4096, 151936, with_bonus, 1, 3, entropy_coef=args.entropy_coef)
    if args.breakdown:
        result["forward_only"] = forward_only(16, 1024, 4096, 151936)
    if args.pad:
        rows += run_case("large-pad", 16, 1024, 4096, 151936, ["full", "triton", "fusedloss"], 1, 3, pad=True)
    if args.sweep_chunks:
        for c, vc in [(8192, 8192), (16384, 8192), (16384, 16384)]:
            kw = dict(chunk_size=c, vocab_chunk_size=vc)
            rows += run_case(f"chunks-{c}-{vc}", 16, 1024, 4096, 151936, ["triton"], 1, 3,
                             check=False, kw_by_impl={"triton": kw})
        # fusedloss: tokens of whole rows held at full vocabulary x the slice width of D
        for c, vc in [(1024, 32768), (2048, 8192), (2048, 32768)]:
            kw = dict(chunk_size=c, vocab_chunk_size=vc)
            rows += run_case(f"fused-chunks-{c}-{vc}", 16, 1024, 4096, 151936, ["fusedloss"], 1, 3,
                             check=False, kw_by_impl={"fusedloss": kw})
    if args.sweep_t:
        for t in (256, 512, 1024, 2048, 4096):
            rows += run_case(f"sweep-T{t}", 8, t, 4096, 151936,
                             ["full", "torch", "triton", "fusedloss"] + ([] if args.skip_liger else ["liger"]),
                             1, 3, check=False)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))

    print("\n| case | impl | B | T | H | V | ms | peak GiB | model TFLOPS | executed TFLOPS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("oom"):
            print(f"| {r['case']} | {r['impl']} | {r['b']} | {r['t']} | {r['h']} | {r['v']} | OOM | OOM | | |")
        else:
            print(f"| {r['case']} | {r['impl']} | {r['b']} | {r['t']} | {r['h']} | {r['v']} | {r['ms']:.1f} | "
                  f"{r['peak_gib']:.2f} | {r['model_tflops']:.0f} | {r['exec_tflops']:.0f} |")


if __name__ == "__main__":
    main()
