"""The learner's execution batches (``batch.max_tokens_per_forward``) against the plain
micro-step loop, written out below as the learner ran it before execution batches existed.

Chunked execution (rows of an accumulation window sorted by length and packed into forwards
under a token budget) must give the gradients and logged metrics of the user's micro-steps,
in float64, for every loss type, LoRA and full fine-tuning, with accumulation, num_iterations
> 1 (old logprobs), beta > 0 (reference) and TIS, on either rank of two. The default on CPU
must be the plain loop to the bit.
"""

from __future__ import annotations

import pytest
import torch

from actors.learner import Learner
from actors.rollout_worker import RolloutWorker
from grpo_ray.advantages import compute_advantages
from grpo_ray.batching import plan_generation_cycle, rank_rows
from grpo_ray.config import LOSS_TYPES
from grpo_ray.loss import grpo_loss, mask_truncated_completions
from tests.support.tiny import tiny_config

PROMPTS = ["1+2=", "33+4=", "5+", "ab"]
#: Accumulation over 2 micro-steps, 2 passes over the batch (the second against old logprobs),
#: a KL term, truncated completions masked: 4 micro-steps of 8 rows, 2 optimizer steps.
RICH = dict(
    grpo={"num_iterations": 2, "beta": 0.1, "mask_truncated_completions": True, "epsilon": 0.05},
    batch={"gradient_accumulation_steps": 2, "steps_per_generation": 2},
    optim={"learning_rate": 5e-2},
)
#: Token budgets: below one row (every row alone), a few rows (forwards cross micro-batches), all.
BUDGETS = (5, 24, 10**6)
#: What a loss type needs besides its name to be a valid config.
NEEDS = {
    "cispo": {"epsilon_high": 5.0},
    "luspo": {"importance_sampling_level": "sequence"},
    "vespo": {"vllm_importance_sampling_mode": "token_truncate"},
}


@pytest.fixture(scope="module")
def batch(checkpoint, tmp_path_factory):
    config = tiny_config(checkpoint, tmp_path_factory.mktemp("gen"), generation={"temperature": 1.5})
    worker = RolloutWorker(config)
    batch = worker.generate(PROMPTS, num_generations=4, seed=1)
    lengths = batch.completion_mask.sum(1)
    assert len(set(lengths.tolist())) > 2 and batch.truncated.any() and not batch.truncated.all()
    batch.rewards = torch.arange(len(batch), dtype=torch.float32).unsqueeze(1) % 3
    batch.advantages = compute_advantages(batch.rewards, 4)
    return batch


def _config(checkpoint, tmp_path, budget, loss_type="dapo", lora=True, rank=None, **sections):
    sections = {k: RICH.get(k, {}) | sections.get(k, {}) for k in RICH.keys() | sections.keys()}
    sections["grpo"] = NEEDS.get(loss_type, {}) | sections["grpo"] | {"loss_type": loss_type}
    sections["lora"] = {"enabled": lora}
    sections["batch"]["max_tokens_per_forward"] = budget
    if rank is not None:
        sections["batch"] |= {"num_processes": 2, "per_device_train_batch_size": 4}
    return tiny_config(checkpoint, tmp_path, **sections)


def _learner(config, rank=0, dtype=torch.float64):
    learner = Learner(config, rank=rank)
    learner.policy.to(dtype)  # in place: the optimizer keeps the same parameters
    if learner.reference is not None:
        learner.reference.to(dtype)
    learner.world_size = learner.backend.world_size = 1  # this rank's share alone (no group)
    return learner


def _gradients_at_each_step(learner):
    """Wrap the backend's step to keep a copy of the gradients it steps with."""
    seen, step = [], learner.backend.step

    def recording(loss):
        seen.append([p.grad.clone() for p in learner.params])
        return step(loss)

    learner.backend.step = recording
    return seen


def micro_step_loop(learner, batch, cycle=0):
    """The plain loop: one forward/backward per user micro-step, ``grpo_loss`` on the whole
    micro-batch, metrics as host floats. Returns (metrics per optimizer step, gradients per step)."""
    c = learner.config
    spg, gas = c.batch.steps_per_generation_value, c.batch.gradient_accumulation_steps
    plan = plan_generation_cycle(c.batch.per_device_train_batch_size, gas, spg, c.grpo.num_generations,
                                 c.batch.num_processes, cycle=cycle, num_iterations=c.grpo.num_iterations)
    mask = batch.completion_mask.float()
    if c.grpo.mask_truncated_completions:
        mask = mask_truncated_completions(mask, batch.truncated)
    num_items = mask.sum()
    mine = rank_rows(plan, learner.rank)
    position = {row: i for i, row in enumerate(mine)}
    batch, mask = batch.select(mine), mask[mine]

    def forward(model, part, **kw):
        return model(part.prompt_ids, part.prompt_mask, part.completion_ids, part.completion_mask,
                     temperature=c.generation.temperature, impl=c.model.logprob_impl,
                     chunk_size=c.model.logprob_chunk_size, **kw)

    @torch.no_grad()
    def logprobs(reference):
        out = torch.zeros(batch.completion_ids.shape, dtype=learner.params[0].dtype)  # float32 as before
        b = c.batch.per_device_train_batch_size
        for start in range(0, len(batch), b):
            part = batch.select(list(range(start, min(start + b, len(batch)))))
            if not reference:
                logps = forward(learner.score, part)
            elif learner.reference is not None:
                logps = forward(type(learner.score)(learner.reference), part)
            else:
                with learner.policy.disable_adapter():
                    logps = forward(learner.score, part)
            out[start:start + len(part), :logps.shape[1]] = logps
        return out

    old = logprobs(False) if gas % (spg * c.grpo.num_iterations) else None
    ref = logprobs(True) if c.grpo.beta > 0 else None
    learner.policy.train()
    steps, grads, window = [], [], {}
    for step in plan:
        rows = [position[r] for r in step.rows[learner.rank]]
        part, idx = batch.select(rows), torch.as_tensor(rows)
        t = part.completion_ids.shape[1]
        logps, entropy = forward(learner.score, part, with_entropy=True)
        loss, metrics = grpo_loss(
            logps, None if old is None else old[idx, :t], None if ref is None else ref[idx, :t], part.advantages,
            mask[idx, :t], c.grpo, num_items_in_batch=num_items, sampling_logps=part.sampling_logps,
            entropies=entropy, gradient_accumulation_steps=gas, steps_per_generation=spg,
            num_processes=c.batch.num_processes,
        )
        loss.backward()
        for k, v in (metrics | {"loss": loss}).items():
            window.setdefault(k, []).append(float(v))
        if step.optimizer_step:
            grads.append([p.grad.clone() for p in learner.params])
            steps.append({k: sum(v) / len(v) for k, v in window.items()} | {"loss": sum(window["loss"])})
            learner.backend.step(steps[-1]["loss"])
            learner.scheduler.step()
            window = {}
    return steps, grads


def _assert_same_training(got, expected, exact=False):
    (metrics, grads), (ref_metrics, ref_grads) = got, expected
    assert len(metrics) == len(ref_metrics) == len(grads) == len(ref_grads) >= 2
    for mine, ref, g, rg in zip(metrics, ref_metrics, grads, ref_grads):
        assert set(ref) <= set(mine)
        for key, value in ref.items():
            assert mine[key] == value if exact else mine[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        for a, b in zip(g, rg):
            if exact:
                assert torch.equal(a, b)
            else:
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    if "clip_ratio/region_mean" in metrics[0]:  # (the clipped loss types report it)
        assert any(m["clip_ratio/region_mean"] > 0 for m in metrics[1:])  # the old-logprob pass mattered


def _train(learner, batch):
    grads = _gradients_at_each_step(learner)
    return learner.train_generation(batch, cycle=0), grads


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_chunked_execution_gives_the_micro_steps_gradients(checkpoint, tmp_path, batch, loss_type, lora):
    expected = micro_step_loop(_learner(_config(checkpoint, tmp_path, 0, loss_type, lora)), batch)
    for budget in BUDGETS:
        got = _train(_learner(_config(checkpoint, tmp_path, budget, loss_type, lora)), batch)
        _assert_same_training(got, expected)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "luspo"])
def test_fused_loss_in_execution_batches_gives_the_micro_steps_gradients(checkpoint, tmp_path, batch, loss_type, lora):
    """model.fused_loss: each forward's gradient formed inside it (row chunks of 2 completions,
    cutting across the forward's micro-batch slices) gives the plain loop's gradients and metrics."""
    expected = micro_step_loop(_learner(_config(checkpoint, tmp_path, 0, loss_type, lora)), batch)
    for budget in BUDGETS:
        config = _config(checkpoint, tmp_path, budget, loss_type, lora,
                         model={"fused_loss": True, "fused_loss_chunk_size": 12})
        _assert_same_training(_train(_learner(config), batch), expected)


@pytest.mark.parametrize("rank", [0, 1])
def test_each_of_two_ranks_chunks_its_own_rows(checkpoint, tmp_path, batch, rank):
    """num_processes=2, per-device batch 4: each rank's share of the gradient (the all-reduce
    that averages them is the same for both paths), here with GSPO's sequence-level ratios."""
    def config(budget):
        return _config(checkpoint, tmp_path, budget, "bnpo", rank=rank, grpo={"importance_sampling_level": "sequence"})

    expected = micro_step_loop(_learner(config(0), rank), batch)
    got = _train(_learner(config(24), rank), batch)
    _assert_same_training(got, expected)


def test_a_loss_that_needs_whole_micro_batches_gets_them(checkpoint, tmp_path, batch, monkeypatch):
    import actors.learner as module

    monkeypatch.setattr(module, "needs_whole_micro_batch", lambda config: True)
    expected = micro_step_loop(_learner(_config(checkpoint, tmp_path, 0, loss_type="grpo")), batch)
    learner = _learner(_config(checkpoint, tmp_path, 10**6, loss_type="grpo"))
    plan, seen = learner._forwards, []

    def spy(micro_batches, rows):
        forwards, micro_index = plan(micro_batches, rows)
        seen.extend((micro_batches, f) for f, _ in forwards)
        return forwards, micro_index

    learner._forwards = spy
    _assert_same_training(_train(learner, batch), expected)
    assert any(len(f.slices) > 1 for _, f in seen)  # forwards did hold several micro-batches
    for micro_batches, f in seen:
        assert all(list(f.rows[s.start:s.stop]) == micro_batches[s.micro_batch] for s in f.slices)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_the_default_on_cpu_is_the_plain_loop_to_the_bit(checkpoint, tmp_path, batch, lora):
    """float32, batch.max_tokens_per_forward left at None: the same gradients and metrics, bit
    for bit, as the micro-step loop."""
    expected = micro_step_loop(_learner(_config(checkpoint, tmp_path, None, lora=lora), dtype=torch.float32), batch)
    got = _train(_learner(_config(checkpoint, tmp_path, None, lora=lora), dtype=torch.float32), batch)
    _assert_same_training(got, expected, exact=True)
