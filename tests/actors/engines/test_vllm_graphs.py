"""The colocated vLLM engine with CUDA graphs (the default): run on the device machine.

    python -m pytest -q -m gpu tests/actors/engines/test_vllm_graphs.py

The graphs are captured for the batch sizes the run can produce only, and they stay valid
across the KV-only sleep (the cache is re-mapped at the same addresses): greedy decoding after a
sleep/wake cycle gives the same tokens as before it, and the sampled tokens' logprobs agree with
the learner's, with and without torch.compile, on a bf16 and a 4-bit base.
"""

from __future__ import annotations

import pytest

from recipes.tiny_model import random_checkpoint
from tests.support.tiny import tiny_config

pytestmark = pytest.mark.gpu
PROMPTS = ["w1 w2 w3 w4", "w9 w8", "w100 w200 w300", "w7"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return random_checkpoint("small", tmp_path_factory.mktemp("small"))


@pytest.mark.parametrize("four_bit,compile_graphs", [(False, True), (False, False), (True, True)])
def test_graphs_survive_the_kv_only_sleep(small, tmp_path, four_bit, compile_graphs):
    from actors.colocated_worker import ColocatedWorker

    config = tiny_config(
        small, tmp_path / "run",
        model={"dtype": "bfloat16", "load_in_4bit": four_bit}, lora={"enabled": True, "r": 16, "alpha": 32},
        grpo={"max_completion_length": 24, "max_prompt_length": 16},
        rollout={"backend": "vllm", "num_workers": 1, "compile": compile_graphs}, run={"mode": "colocate"},
    )
    worker = ColocatedWorker(config)
    try:
        assert not worker.engine.llm.llm_engine.vllm_config.model_config.enforce_eager
        captured = worker.engine.llm.llm_engine.vllm_config.compilation_config.cudagraph_capture_sizes
        assert captured == [1, 2, 3, 4, 6, 8, 12, 16]  # effective batch 16: nothing larger is captured
        worker.sync_weights()
        first = worker.generate(PROMPTS, num_generations=4, seed=0, greedy=True)  # wakes, decodes, sleeps
        again = worker.generate(PROMPTS, num_generations=4, seed=0, greedy=True)
        assert first.completion_ids.tolist() == again.completion_ids.tolist()
        # decoding through the re-mapped cache is right: the learner recomputes the sampled tokens' logprobs
        sampled = worker.generate(PROMPTS, num_generations=4, seed=1)
        mask = sampled.completion_mask.bool()
        assert int(mask.sum()) > len(sampled)
        gap = (worker.learner.logprobs(sampled) - sampled.sampling_logps)[mask].abs()
        assert gap.mean() < 0.02 and gap.max() < 0.2
    finally:
        worker.engine.wake_up()  # vLLM must be awake when it is torn down
