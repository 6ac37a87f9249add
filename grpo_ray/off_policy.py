"""Which policy anchors the PPO ratio when samples come from older weights (``rollout.off_policy_correction``).

Three policies meet in an asynchronous step: the **behaviour** policy mu that sampled the
tokens (the engine's per-token logprobs, ``RolloutBatch.sampling_logps``, weights of an
earlier update), the **proximal** (old) policy pi_old the clipped ratio is measured against,
and the policy pi_theta being trained. :func:`grpo_ray.loss.grpo_loss` computes, per token::

    -min(r A, clip(r, 1 - eps, 1 + eps_high) A) * w,   r = pi_theta / pi_old,   w = min(pi_old / mu, C)

(``w`` is the truncated importance weight of the engine correction, ``grpo.vllm_importance_
sampling_*``). This is the decoupled PPO objective of AReaL (Fu et al. 2025, arXiv:2505.24298,
eq. 5: the clipped ratio against a proximal policy, times the behaviour importance weight
pi_prox / pi_behav) with the weight truncated as in TIS (Yao et al. 2025, "Your Efficient RL
Framework Secretly Brings You Off-Policy RL Training"). The two choices differ only in which
learner weights pi_old is:

- ``tis``: the learner when it starts the generation batch (TRL's rule: its logprobs are
  computed by a pass at the start when the weights move within the batch, i.e. the batch
  feeds more than one optimizer step; otherwise the current weights are those). Across the
  batch's optimizer steps the ratio keeps the PPO trust region around that start.
- ``decoupled``: the learner at the start of **each optimizer step**, as the proximal policy is
  defined for the decoupled objective. The weights do not move within an optimizer step's
  accumulation window, so pi_old is the step's own forward pass, detached (``old_logps=None``
  in ``grpo_loss``): no extra pass, the ratio is 1 in value with the gradient of log pi_theta,
  and the behaviour weight pi_theta / mu (capped) carries the whole off-policy correction.

With one optimizer step per generation batch the two are the same objective.
"""

from __future__ import annotations


def needs_old_logprobs(
    correction: str, gradient_accumulation_steps: int, steps_per_generation: int, num_iterations: int
) -> bool:
    """Whether the learner runs a pass for pi_old at the start of a generation batch.

    ``tis``: when the weights move within the batch (``gradient_accumulation_steps`` does not
    divide its ``steps_per_generation x num_iterations`` micro-steps), TRL's rule; otherwise the
    detached current logprobs equal pi_old. ``decoupled``: never (pi_old is each optimizer step's
    own weights)."""
    if correction == "decoupled":
        return False
    if correction != "tis":
        raise ValueError(f"off_policy_correction must be 'tis' or 'decoupled', got {correction!r}")
    return gradient_accumulation_steps % (steps_per_generation * num_iterations) != 0
