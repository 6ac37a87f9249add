"""grpo-ray: GRPO fine-tuning of LLMs with verifiable rewards, on Ray.

Importing the package sets one process default before torch loads its OpenMP runtime:
``OMP_WAIT_POLICY=PASSIVE`` (unless already set), so that idle OpenMP threads sleep instead of
spinning. On a machine with more busy threads than cores (a driver beside its actors, the suite
beside other jobs on a 2-core box) spinning threads made every torch op several times slower:
a 64-dim model's SFT step took 4.3 s with spinning threads and 0.56 s with passive ones at load
average 12 on 2 cores. The actors inherit it (their processes start from the driver's
environment); it changes no result, only how waiting threads wait.

It also quiets one misleading warning in every process that imports it (the actors too):
bitsandbytes, which peft imports, looks for the `kernels` hub package, finds this project's
``kernels/`` package instead and warns "Failed to load CPU gemm_4bit_forward".
"""

import logging
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
