"""A reward endpoint over HTTP, for HttpReward / ``"http://127.0.0.1:PORT/score"`` in a config.

Serves ``POST /score``: JSON ``{"prompts", "completions", "columns"}`` in, ``{"scores": [...]}``
out, here scoring with grpo_ray's math verifier against the ``answer`` column. It binds to
127.0.0.1 only. Run:  python examples/http_reward_server.py --port 8000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from grpo_ray.rewards.math import math_reward  # noqa: E402


class ScoreHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        if self.path != "/score":
            return self._reply(404, {"error": f"no route {self.path}; POST /score"})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            scores = math_reward(body["prompts"], body["completions"], **body.get("columns", {}))
        except (KeyError, TypeError, ValueError) as exc:
            return self._reply(400, {"error": f"{type(exc).__name__}: {exc}"})
        self._reply(200, {"scores": scores})

    def _reply(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    port = parser.parse_args().port
    server = ThreadingHTTPServer(("127.0.0.1", port), ScoreHandler)
    print(f"listening on http://127.0.0.1:{port}/score", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
