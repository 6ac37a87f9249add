"""grpo_ray.tracking: the metrics log of a resumed run holds each step once."""

import json

from grpo_ray.tracking import MetricsLog


def test_a_resumed_log_drops_the_steps_it_will_redo_and_a_torn_last_line(tmp_path):
    log = MetricsLog(str(tmp_path))
    for step in range(1, 6):
        log.write(step, {"loss": float(step)})
    log.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # a write cut short by kill -9
    log = MetricsLog(str(tmp_path), resume_step=3)
    log.write(4, {"loss": 40.0})
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in lines] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
