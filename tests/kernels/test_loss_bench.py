"""benchmarks/loss_bench.py runs end to end on CPU at toy sizes (CUDA timers and memory stats
stubbed), and its implementations agree, so a GPU run does not die on a script bug and the
rows it reports compare the same loss."""

import importlib.util
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


class _Event:
    def __init__(self, enable_timing=True):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("loss_bench", ROOT / "benchmarks" / "loss_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "DEVICE", "cpu")
    for name, fn in {
        "Event": _Event, "synchronize": lambda: None, "empty_cache": lambda: None,
        "reset_peak_memory_stats": lambda: None, "memory_allocated": lambda: 0, "max_memory_allocated": lambda: 0,
    }.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    return mod


def test_bench_runs_and_implementations_agree(bench):
    impls = ["full", "torch", "fusedloss-torch"]
    try:
        import liger_kernel.chunked_loss  # noqa: F401

        impls.append("liger")
    except Exception:
        pass
    rows = bench.run_case("toy", 2, 24, 32, 300, impls, warmup=1, reps=2)
    assert [r["impl"] for r in rows] == impls
    for r in rows:
        assert r["ms"] > 0 and r["model_tflops"] > 0
        assert r["active"] == 1.0  # every token carries gradient, so the FLOP counts hold
    for r in rows[1:]:  # rows[0] is the naive ("full") reference the others are compared with
        assert r["loss_rel_vs_naive"] < 2e-2, r  # bf16: logits rounded differently per path
        assert max(r["grad_rel_vs_naive"]) < 3e-2, r
    by = {r["impl"]: r for r in rows}
    # the fused loss executes the model's FLOPs (no recompute), the other chunked rows 8NHV / 6NHV
    assert by["fusedloss-torch"]["exec_tflops"] == by["fusedloss-torch"]["model_tflops"]
    assert by["torch"]["exec_tflops"] == pytest.approx(by["torch"]["model_tflops"] * 8 / 6)
    frozen = bench.run_case("toy-lora", 2, 24, 32, 300, ["full", "torch", "fusedloss-torch"], 1, 1, weight_grad=False)
    assert all(len(r["grad_rel_vs_naive"]) == 1 for r in frozen[1:])  # hidden only
    assert all(max(r["grad_rel_vs_naive"]) < 3e-2 for r in frozen[1:])
    assert bench.flops(2, 3, 4, 5, True) == (6 * 6 * 20, 8 * 6 * 20)
    # the fused rows' chunk keywords reach chunked_grpo_loss: 24-token rows, 2 rows per chunk
    swept = bench.run_case("toy-chunks", 4, 24, 32, 300, ["full", "fusedloss-torch"], 1, 1,
                           kw_by_impl={"fusedloss-torch": dict(chunk_size=48, vocab_chunk_size=128)})
    assert max(swept[1]["grad_rel_vs_naive"]) < 3e-2
    # --entropy-coef: the bonus's rows agree too, and the bonus changed the loss
    bonus = bench.run_case("toy-entropy", 2, 24, 32, 300, ["full", "torch", "fusedloss-torch"], 1, 1, entropy_coef=1.0)
    assert all(r["loss_rel_vs_naive"] < 2e-2 and max(r["grad_rel_vs_naive"]) < 3e-2 for r in bonus[1:])
    assert abs(bonus[0]["loss"] - rows[0]["loss"]) > 0.1
