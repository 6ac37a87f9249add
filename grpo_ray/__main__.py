"""``python -m grpo_ray train ...`` (or the ``grpo-ray`` command): train with GRPO; ``plot LOG``: draw a run.

    python -m grpo_ray train --help          # every knob, by section
    python -m grpo_ray plot outputs/run/metrics.jsonl
"""

from __future__ import annotations

import sys
from typing import Sequence

COMMANDS = {"train": "grpo_ray.train", "plot": "grpo_ray.plot"}


def main(argv: Sequence[str] | None = None) -> None:
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    sys.argv[0] = f"python -m grpo_ray {argv[0]}"  # the name --help shows
    importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main()
