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
    impls = ["full", "torch"]
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
    frozen = bench.run_case("toy-lora", 2, 24, 32, 300, ["full", "torch"], 1, 1, weight_grad=False)
    assert len(frozen[1]["grad_rel_vs_naive"]) == 1  # hidden only
    assert bench.flops(2, 3, 4, 5, True) == (6 * 6 * 20, 8 * 6 * 20)
