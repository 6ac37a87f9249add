"""benchmarks/distributed_bench.py runs every part end to end on CPU (``--smoke``: the hf engine,
gloo, a 2-layer model), so the scarce GPU run does not die on a script bug; and the shared
benchmark helpers pick the right GPU and clean up after a part that hangs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def common(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import benchmarks.common as module

    return module


def test_nvml_names_the_gpus_cuda_visible_devices_names(common, monkeypatch):
    """NVML ignores CUDA_VISIBLE_DEVICES: a process given GPU 1 must read NVML's device 1."""
    assert common.visible_devices({"CUDA_VISIBLE_DEVICES": "1,0"}) == ["1", "0"]
    assert common.visible_devices({"CUDA_VISIBLE_DEVICES": "GPU-ab12, GPU-cd34"}) == ["GPU-ab12", "GPU-cd34"]
    calls = []
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: calls.append(("index", i)),
        nvmlDeviceGetHandleByUUID=lambda u: calls.append(("uuid", u)),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    common.nvml_handle("1")
    common.nvml_handle("GPU-ab12")
    assert calls == [("index", 1), ("uuid", "GPU-ab12")]


def test_a_part_that_hangs_is_killed_with_its_children_and_reported(common, tmp_path):
    script = tmp_path / "hangs.py"
    script.write_text(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    started = time.monotonic()
    result = common.run_part(script, [], timeout=3, log=tmp_path / "hangs.log")
    assert time.monotonic() - started < 15
    assert result["error"] == "timed out after 3s" and "child" in result["stdout_tail"]
    child = int(result["stdout_tail"].split()[1])
    deadline = time.monotonic() + 10
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(child)


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_smoke_runs_every_part_and_the_figures_hold_together(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "distributed_bench.py"), "all", "--smoke", "--steps", "3",
         "--pushes", "2", "--workdir", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=500, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1][len("RESULT "):])
    assert json.loads(out.read_text()) == result
    assert "error" not in json.dumps(result), json.dumps(result)[:3000]
    sync = result["sync"]["small"]
    for kind in ("full", "lora"):
        r = sync[kind]
        assert r["backend"] == "gloo" and r["sync_check"] == "passed" and len(r["all_s"]) == 2
        assert r["probe_gap_synced"] <= r["tolerance"] < r["probe_gap_stale"]  # the probe sees the perturbation, then not
        assert r["bytes"] > 0 and r["gb_per_s"] > 0 and 0 < r["engine_load_s"] < r["sync_s"]
        stages = r["stages_s"]
        assert set(stages) == {"export", "send", "receive", "engine_load"} and min(stages.values()) > 0
        assert stages["export"] + stages["send"] < r["sync_s"] and stages["receive"] + stages["engine_load"] < r["sync_s"]
    assert sync["lora"]["bytes"] < sync["full"]["bytes"]
    assert set(result["step"]) == {"distributed-s0", "distributed-s1", "colocate-s1"}
    for name, step in result["step"].items():
        s = step["max_staleness"]
        # steps 1-3 are cycles 0-2 (one optimizer step each); cycle c is generated with update max(c - s, 0)
        assert [x["weight_version_sampled"] for x in step["steps"]] == [max(c - s, 0) for c in range(3)], name
        assert [x["async/staleness"] for x in step["steps"]] == [min(c, s) for c in range(3)], name
        assert step["staleness_histogram"] == {str(k): 16.0 * [min(c, s) for c in range(3)].count(k) for k in range(s + 1)}
        assert step["median_of_steps"] == [2, 3]
        median = step["median"]
        assert set(median) == {
            "time/cycle_s", "time/rollout_s", "time/generate_s", "time/rewards_s", "time/learner_s", "time/train_s",
            "time/sync_s", "time/sync_check_s", "time/learner_wait_s", "time/rollout_held_s", "time/overlap_s",
            "async/overlap", "async/staleness",
        }
        stages = median["time/rollout_s"] + median["time/rewards_s"] + median["time/learner_s"] + median["time/sync_s"]
        assert stages <= median["time/cycle_s"] * 1.01 and 0 <= median["async/overlap"] <= 1
        assert step["step_over_longer_phase"] > 0
    # synchronous: nothing generates while the learner trains; asynchronous: the next cycle's rollout does
    assert [x["async/overlap"] for x in result["step"]["distributed-s0"]["steps"]] == [0.0] * 3
    for name in ("distributed-s1", "colocate-s1"):
        assert result["step"][name]["steps"][0]["async/overlap"] > 0, name
    assert set(result["summary"]) == {
        "sync small full", "sync small lora", "step distributed-s0", "step distributed-s1", "step colocate-s1",
    }
