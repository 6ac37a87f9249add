"""HTTP reward endpoints (on 127.0.0.1 only) and the Ray-actor client's plumbing.

The actor client is exercised against a real Ray actor in tests/actors/test_reward_worker.py.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from grpo_ray.rewards.pool import RewardPool
from grpo_ray.rewards.remote import ActorReward, HttpReward, RemoteRewardError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


class Handler(BaseHTTPRequestHandler):
    calls: dict[str, int] = {}

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.calls[self.path] = Handler.calls.get(self.path, 0) + 1
        n = len(body["completions"])
        if self.path == "/flaky" and Handler.calls[self.path] <= 2:
            return self.reply(503, {"error": "busy"})
        if self.path == "/down":
            return self.reply(500, {"error": "down"})
        if self.path == "/bad-request":
            return self.reply(400, {"error": "nope"})
        if self.path == "/slow":
            time.sleep(1.0)
        if self.path == "/malformed":
            return self.reply(200, {"scores": [1.0]})
        scores = [float(len(c)) * w for c, w in zip(body["completions"], body["columns"].get("weight", [1] * n))]
        self.reply(200, {"scores": scores})

    def reply(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_posts_the_batch_and_returns_scores(server):
    reward = HttpReward(f"{server}/score")
    assert reward(["p", "p"], ["ab", "abc"], weight=[1, 2]) == [2.0, 6.0]


def test_retries_transient_failures(server):
    Handler.calls.pop("/flaky", None)
    assert HttpReward(f"{server}/flaky", retries=2, backoff_s=0.01)(["p"], ["abcd"]) == [4.0]
    assert Handler.calls["/flaky"] == 3


def test_gives_up_after_retries_and_does_not_retry_client_errors(server):
    Handler.calls.clear()
    with pytest.raises(RemoteRewardError, match="failed 3 times"):
        HttpReward(f"{server}/down", retries=2, backoff_s=0.01)(["p"], ["a"])
    with pytest.raises(RemoteRewardError, match="HTTP 400"):
        HttpReward(f"{server}/bad-request", retries=2)(["p"], ["a"])
    assert Handler.calls == {"/down": 3, "/bad-request": 1}
    with pytest.raises(RemoteRewardError, match="with 2 entries"):
        HttpReward(f"{server}/malformed")(["p", "p"], ["a", "b"])


def test_times_out(server):
    started = time.monotonic()
    with pytest.raises(RemoteRewardError, match="failed 2 times"):
        HttpReward(f"{server}/slow", timeout_s=0.2, retries=1, backoff_s=0.0)(["p"], ["a"])
    assert time.monotonic() - started < 0.9


def test_unreachable_endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(RemoteRewardError, match="failed 1 times"):
        HttpReward(f"http://127.0.0.1:{port}/x", retries=0)(["p"], ["a"])


def test_named_in_a_pool_like_any_reward_function(server, caplog):
    with RewardPool([f"{server}/score", f"{server}/down", "math"], timeout_s=5, penalty=-1.0) as pool:
        with caplog.at_level("WARNING", logger="grpo_ray.rewards"):
            scores = pool.score(["p", "p"], ["\\boxed{2}", "3"], {"answer": ["2", "2"], "weight": [1, 1]})
    assert scores == [[9.0, -1.0, 1.0], [1.0, -1.0, 0.0]]
    assert any("/down" in r.getMessage() for r in caplog.records)


def test_http_reward_validates_its_settings():
    with pytest.raises(ValueError, match="http"):
        HttpReward("ftp://x")
    with pytest.raises(ValueError, match="timeout_s"):
        HttpReward("http://127.0.0.1:1/", timeout_s=0)


def test_actor_reward_uri_and_pickling():
    reward = ActorReward.from_uri("actor://rewards/judge")
    assert (reward.namespace, reward.name, reward.method) == ("rewards", "judge", "score")
    assert reward.__name__ == "actor://rewards/judge"
    reward._handle = object()  # a live handle is never shipped to another process
    assert pickle.loads(pickle.dumps(reward))._handle is None
    with pytest.raises(ValueError, match="actor://namespace/name"):
        ActorReward.from_uri("actor://")


def test_example_http_server_end_to_end():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "examples/http_reward_server.py", "--port", str(port)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "listening on http://127.0.0.1" in proc.stdout.readline()
        reward = HttpReward(f"http://127.0.0.1:{port}/score", retries=3, backoff_s=0.2)
        assert reward(["q", "q"], ["so \\boxed{18}", "17"], answer=["#### 18", "18"]) == [1.0, 0.0]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
