"""The one typed config: every knob of a grpo-ray run lives here, and only here.

One frozen dataclass per concern, composed into :class:`TrainConfig`. Each field carries its
help text in ``metadata["help"]``; the CLI (:mod:`grpo_ray.cli`), YAML loading and the
README's knob table are all generated from these declarations. Every ``__post_init__``
validates its own fields and raises :class:`ConfigError` naming the field and the fix, so a
bad run dies at start-up, before any model is loaded or any GPU is touched.

The GRPO knobs keep TRL's names and defaults (``GRPOConfig`` of ``trl`` 1.16; Unsloth's
advanced RL documentation lists the same set). Where a default differs, its help says why
(``per_device_train_batch_size``: two prompts per cycle by default). ``kl_estimator`` is ours
(TRL always uses k3). Combinations TRL only warns about but that do not compute the paper's
objective (luspo with token-level ratios, vespo with sequence-level ones, cispo without an
explicit cap, delta on an unclipped loss) are refused here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field and how to fix it."""


def knob(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with its help text (shown by ``--help`` and in the README table)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed in frozen configs; use a tuple")
    return field(default=default, metadata={"help": help})


def _fail(section: str, name: str, value: Any, fix: str) -> None:
    raise ConfigError(f"{section}.{name}={value!r} is invalid: {fix}")


def _check_choice(section: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        _fail(section, name, value, f"choose one of {', '.join(map(repr, choices))}")


def _check_positive(section: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        _fail(section, name, value, f"set a finite number {bound}")


def _check_int(section: str, name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        _fail(section, name, value, f"set an integer >= {minimum}")


def _check_resources(section: str, name: str, value: Any) -> None:
    for entry in value:
        key, sep, amount = entry.partition("=") if isinstance(entry, str) else ("", "", "")
        try:
            ok = bool(sep and key.strip()) and float(amount) > 0
        except ValueError:
            ok = False
        if not ok or key.strip() in ("CPU", "GPU", "memory"):
            _fail(section, name, value, "give custom Ray resources as 'NAME=AMOUNT' (AMOUNT > 0; not CPU/GPU/memory), "
                  "e.g. 'learner_node=1' for a node started with --resources='{\"learner_node\": 8}'")


def resource_dict(entries: tuple[str, ...]) -> dict[str, float]:
    """``('node_a=1', ...)`` -> ``{'node_a': 1.0, ...}`` (entries validated by the config)."""
    return {k.strip(): float(v) for k, _, v in (e.partition("=") for e in entries)}


LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
CLIPPED_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "luspo")  # the ones epsilon / delta clip
IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
KL_ESTIMATORS = ("k1", "k2", "k3")
SCALE_REWARDS = ("group", "batch", "none")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
REPORT_SINKS = ("tensorboard", "wandb", "swanlab")
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "auto")
OFF_POLICY_CORRECTIONS = ("tis", "decoupled")


@dataclass(frozen=True)
class GRPOConfig:
    """The algorithm: group sampling, advantages, the clipped surrogate, KL and IS correction."""

    num_generations: int = knob(8, "Completions sampled per prompt (the group size G).")
    num_iterations: int = knob(
        1, "PPO epochs over each generation batch (mu in the GRPO paper); >1 needs old logprobs."
    )
    beta: float = knob(
        0.0, "KL coefficient against the reference policy; 0 loads no reference (faster, less memory)."
    )
    epsilon: float = knob(0.2, "Lower clip range of the importance ratio: ratio >= 1 - epsilon.")
    epsilon_high: float | None = knob(
        None,
        "Upper clip range (ratio <= 1 + epsilon_high); None = epsilon. DAPO suggests 0.28. With "
        "loss_type='cispo' it is the cap eps_max of the importance weight itself (ScaleRL suggests 5.0).",
    )
    delta: float | None = knob(
        None, "Two-sided GRPO: also cap the unclipped ratio at delta (INTELLECT-2; use > 1 + epsilon)."
    )
    sapo_temperature_neg: float = knob(
        1.05, "SAPO: temperature of the soft gate for tokens with advantage <= 0 (arXiv:2511.20347)."
    )
    sapo_temperature_pos: float = knob(
        1.0, "SAPO: temperature of the soft gate for tokens with advantage > 0 (arXiv:2511.20347)."
    )
    vespo_k_pos: float = knob(
        2.0, "VESPO: power k of phi(w) = e^lambda w^k e^(-lambda w) for advantage >= 0 (down-weights w < 1)."
    )
    vespo_lambda_pos: float = knob(
        3.0, "VESPO: decay lambda of phi(w) for advantage >= 0 (down-weights sequence ratios w > 1)."
    )
    vespo_k_neg: float = knob(3.0, "VESPO: power k of phi(w) for advantage < 0.")
    vespo_lambda_neg: float = knob(2.0, "VESPO: decay lambda of phi(w) for advantage < 0.")
    loss_type: str = knob(
        "dapo",
        "The objective. Clipped surrogate with a normaliser: grpo (per sequence), dr_grpo "
        "(B x max_completion_length), dapo (tokens in the whole generation batch), bnpo (tokens in the "
        "local batch), luspo (GSPO weighted by length: per-sequence sums; needs importance_sampling_level="
        "'sequence'). Other surrogates: cispo (clipped, detached IS weight x log-prob, MiniMax-M1; needs "
        "epsilon_high >= 1), sapo (soft sigmoid gate instead of the clip), vespo (Gamma-shaped sequence "
        "weight instead of the clip; needs importance_sampling_level='token'); cispo and vespo normalise "
        "like dapo, sapo like grpo.",
    )
    importance_sampling_level: str = knob(
        "token", "token: one ratio per token; sequence: mean log-ratio per sequence (GSPO)."
    )
    scale_rewards: str | bool = knob(  # bool accepted (TRL's form), stored as "group"/"none"
        "group",
        "Advantage scaling: group (std within each group), batch (std over the batch), "
        "none (no scaling, as Dr. GRPO recommends). true/false map to group/none.",
    )
    reward_weights: tuple[float, ...] | None = knob(
        None, "One weight per reward function; None = all 1.0."
    )
    mask_truncated_completions: bool = knob(
        False, "Exclude completions that hit max_completion_length without EOS from the loss (DAPO)."
    )
    top_entropy_quantile: float = knob(
        1.0,
        "Train only on the top rho fraction of loss tokens by entropy (Beyond the 80/20 Rule, arXiv:2506.01939; "
        "0.2 there): 1.0 keeps all tokens, 0.0 only the highest-entropy one. The threshold is a quantile over "
        "the whole micro-batch on every learner process.",
    )
    vllm_importance_sampling_correction: bool = knob(
        True,
        "Correct for the rollout engine sampling with other numerics than the learner: weight the loss by "
        "pi_old/pi_sampler as vllm_importance_sampling_mode says. Applied when sampler logprobs are given.",
    )
    vllm_importance_sampling_mode: str = knob(
        "sequence_mask",
        "token_truncate (clamp each token's ratio to [clip_min, clip_max]: TIS), token_mask (zero tokens "
        "whose ratio is outside), sequence_truncate / sequence_mask (the same with one ratio per sequence, "
        "the product over its tokens: MIS). vespo needs a token_* mode.",
    )
    vllm_importance_sampling_clip_max: float | None = knob(
        3.0, "C_max of the engine correction: truncate (or mask) ratios above it; None = no upper bound."
    )
    vllm_importance_sampling_clip_min: float | None = knob(
        None, "C_min of the engine correction: truncate (or mask) ratios below it; None = no lower bound."
    )
    vllm_importance_sampling_cap: float | None = knob(
        None,
        "Removed (TRL 1.16 deprecates it too); setting it is an error. Use vllm_importance_sampling_clip_max, "
        "with vllm_importance_sampling_mode='token_truncate' for what it meant here (token-level truncation).",
    )
    off_policy_mask_threshold: float | None = knob(
        None,
        "Off-policy sequence masking (DeepSeek-V3.2, eq. 9): drop a negative-advantage completion whose mean "
        "per-token log(pi_sampler/pi) exceeds this (e.g. 0.5; pi_old stands in for the sampler when the engine "
        "gave no logprobs); None = off.",
    )
    use_bias_correction_kl: bool = knob(
        True,
        "Multiply the KL term by the importance ratio pi/pi_old (DeepSeek-V3.2) so its gradient is the "
        "unbiased reverse-KL gradient; changes the gradient whenever beta > 0, on-policy too.",
    )
    kl_estimator: str = knob(
        "k3",
        "KL(pi || pi_ref) estimator of the beta term (Schulman 2020): k3 = e^x - x - 1 (TRL's), k2 = x^2/2, "
        "k1 = -x, with x = log pi_ref - log pi.",
    )
    max_prompt_length: int | None = knob(
        512,
        "Prompt token limit: `python -m grpo_ray train` drops (and counts) longer prompts before training; "
        "the rollout engine cuts any that still reach it from the left. None = no limit.",
    )
    max_completion_length: int = knob(512, "Most tokens generated per completion.")
    entropy_coef: float = knob(
        0.0,
        "Entropy bonus: subtract entropy_coef x the mean per-token entropy (over the loss tokens, the high-entropy "
        "ones when top_entropy_quantile < 1) from the loss, whatever the loss_type's normaliser, to keep the policy "
        "exploring; 0 = off, negative = an entropy penalty. With use_adaptive_entropy, the initial coefficient.",
    )
    use_adaptive_entropy: bool = knob(
        False,
        "Adaptive entropy control (Skywork-OR1, arXiv:2505.22312): after each optimizer step the coefficient moves "
        "by entropy_coef_delta, up when the step's mean entropy is <= entropy_target, else down (within "
        "[entropy_coef_min, entropy_coef_max]), and the bonus applies only while the last step's entropy is <= "
        "entropy_target (not in the first step). Saved in checkpoints.",
    )
    entropy_coef_min: float = knob(0.0, "Adaptive entropy control: lower bound of the coefficient.")
    entropy_coef_max: float = knob(1.0, "Adaptive entropy control: upper bound of the coefficient.")
    entropy_coef_delta: float = knob(0.005, "Adaptive entropy control: the coefficient's change per optimizer step.")
    entropy_target: float = knob(
        0.2,
        "Adaptive entropy control: target mean per-token entropy in nats, over the same tokens as the bonus. "
        "Language models sit at about 2-10 nats per token, so 0.2 acts only on near-collapse: set it near the "
        "`entropy` metric logged early in training.",
    )

    def __post_init__(self) -> None:
        s = "grpo"
        # TRL accepts booleans for scale_rewards; normalise them to the string form.
        if self.scale_rewards is True:
            object.__setattr__(self, "scale_rewards", "group")
        elif self.scale_rewards is False:
            object.__setattr__(self, "scale_rewards", "none")
        if self.reward_weights is not None and not isinstance(self.reward_weights, tuple):
            object.__setattr__(self, "reward_weights", tuple(self.reward_weights))
        _check_int(s, "num_generations", self.num_generations, 2)
        _check_int(s, "num_iterations", self.num_iterations, 1)
        _check_positive(s, "beta", self.beta, allow_zero=True)
        _check_positive(s, "epsilon", self.epsilon)
        if self.epsilon >= 1:
            _fail(s, "epsilon", self.epsilon, "set 0 < epsilon < 1 (the lower bound 1 - epsilon must stay > 0)")
        if self.epsilon_high is not None:
            _check_positive(s, "epsilon_high", self.epsilon_high)
        _check_choice(s, "loss_type", self.loss_type, LOSS_TYPES)
        if self.delta is not None:
            _check_positive(s, "delta", self.delta)
            if self.loss_type not in CLIPPED_LOSS_TYPES:
                _fail(s, "delta", self.delta, f"delta caps the clipped surrogate, which loss_type={self.loss_type!r} "
                      f"has not: set delta=None, or a loss_type among {', '.join(CLIPPED_LOSS_TYPES)}")
            if self.delta <= 1 + self.epsilon_high_value:
                _fail(s, "delta", self.delta, f"set delta > 1 + epsilon_high = {1 + self.epsilon_high_value}")
        if self.loss_type == "cispo" and (self.epsilon_high is None or self.epsilon_high < 1):
            _fail(s, "epsilon_high", self.epsilon_high, "loss_type='cispo' caps the importance weight at epsilon_high "
                  "itself (not 1 + epsilon_high): set epsilon_high >= 1, e.g. 5.0 as ScaleRL recommends")
        for name in ("sapo_temperature_neg", "sapo_temperature_pos", "vespo_lambda_pos", "vespo_lambda_neg"):
            _check_positive(s, name, getattr(self, name))
        for name in ("vespo_k_pos", "vespo_k_neg"):
            _check_positive(s, name, getattr(self, name), allow_zero=True)
        _check_choice(s, "importance_sampling_level", self.importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS)
        if self.loss_type == "luspo" and self.importance_sampling_level != "sequence":
            _fail(s, "importance_sampling_level", self.importance_sampling_level,
                  "loss_type='luspo' weighs GSPO's sequence ratio by length: set importance_sampling_level='sequence'")
        if self.loss_type == "vespo" and self.importance_sampling_level != "token":
            _fail(s, "importance_sampling_level", self.importance_sampling_level,
                  "loss_type='vespo' builds its own sequence weight from the token ratios: set "
                  "importance_sampling_level='token'")
        _check_choice(s, "scale_rewards", self.scale_rewards, SCALE_REWARDS)
        if self.reward_weights is not None:
            if len(self.reward_weights) == 0:
                _fail(s, "reward_weights", self.reward_weights, "give one weight per reward function, or None")
            for w in self.reward_weights:
                if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
                    _fail(s, "reward_weights", self.reward_weights, "every weight must be a finite number")
        if not 0.0 <= self.top_entropy_quantile <= 1.0:
            _fail(s, "top_entropy_quantile", self.top_entropy_quantile, "set 0 <= top_entropy_quantile <= 1 (1 = every token)")
        self._check_engine_correction()
        if self.off_policy_mask_threshold is not None:
            _check_positive(s, "off_policy_mask_threshold", self.off_policy_mask_threshold)
        _check_choice(s, "kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        if self.max_prompt_length is not None:
            _check_int(s, "max_prompt_length", self.max_prompt_length, 1)
        _check_int(s, "max_completion_length", self.max_completion_length, 1)
        self._check_entropy_control()

    def _check_entropy_control(self) -> None:
        s, coef = "grpo", self.entropy_coef
        if not isinstance(coef, (int, float)) or isinstance(coef, bool) or not math.isfinite(coef):
            _fail(s, "entropy_coef", coef, "set a finite number (0 = no entropy bonus)")
        _check_positive(s, "entropy_coef_min", self.entropy_coef_min, allow_zero=True)
        _check_positive(s, "entropy_coef_max", self.entropy_coef_max, allow_zero=True)
        if self.entropy_coef_max < self.entropy_coef_min:
            _fail(s, "entropy_coef_max", self.entropy_coef_max, f"set it >= entropy_coef_min={self.entropy_coef_min}")
        _check_positive(s, "entropy_coef_delta", self.entropy_coef_delta)
        _check_positive(s, "entropy_target", self.entropy_target, allow_zero=True)
        if self.use_adaptive_entropy and not self.entropy_coef_min <= coef <= self.entropy_coef_max:
            _fail(s, "entropy_coef", coef, "with use_adaptive_entropy it is the initial coefficient: set it within "
                  f"[entropy_coef_min, entropy_coef_max] = [{self.entropy_coef_min}, {self.entropy_coef_max}]")

    def _check_engine_correction(self) -> None:
        s, mode = "grpo", self.vllm_importance_sampling_mode
        if self.vllm_importance_sampling_cap is not None:
            _fail(s, "vllm_importance_sampling_cap", self.vllm_importance_sampling_cap,
                  "it was replaced: set vllm_importance_sampling_clip_max instead (with "
                  "vllm_importance_sampling_mode='token_truncate' for the token-level truncation it meant here)")
        _check_choice(s, "vllm_importance_sampling_mode", mode, IMPORTANCE_SAMPLING_MODES)
        low, high = self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max
        if high is not None:
            _check_positive(s, "vllm_importance_sampling_clip_max", high)
            if high < 1:
                _fail(s, "vllm_importance_sampling_clip_max", high, "set C_max >= 1 (or None)")
        if low is not None:
            _check_positive(s, "vllm_importance_sampling_clip_min", low, allow_zero=True)
            if low > 1 or (high is not None and low >= high):
                _fail(s, "vllm_importance_sampling_clip_min", low,
                      "set 0 <= C_min <= 1 and below vllm_importance_sampling_clip_max (or None)")
        if not self.vllm_importance_sampling_correction:
            return
        if mode.endswith("_truncate") and low is None and high is None:
            _fail(s, "vllm_importance_sampling_mode", mode, "a *_truncate mode needs vllm_importance_sampling_clip_max "
                  "or vllm_importance_sampling_clip_min set (or a *_mask mode)")
        if self.loss_type == "vespo" and not mode.startswith("token_"):
            _fail(s, "vllm_importance_sampling_mode", mode, "loss_type='vespo' folds per-token engine ratios into its "
                  "sequence weight: set 'token_truncate' or 'token_mask', or vllm_importance_sampling_correction=false")

    @property
    def epsilon_high_value(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings for the rollout engine (same meaning in the HF and vLLM backends)."""

    temperature: float = knob(1.0, "Sampling temperature; keep it high (1.0) so groups are diverse.")
    top_p: float = knob(1.0, "Nucleus sampling: keep the smallest token set with this total probability.")
    top_k: int | None = knob(None, "Keep only the k most likely tokens; None disables top-k.")
    min_p: float | None = knob(None, "Drop tokens below min_p x the top token's probability; None disables.")
    repetition_penalty: float = knob(1.0, "> 1 discourages repeating prompt/completion tokens.")

    def __post_init__(self) -> None:
        s = "generation"
        _check_positive(s, "temperature", self.temperature)
        _check_positive(s, "top_p", self.top_p)
        if self.top_p > 1:
            _fail(s, "top_p", self.top_p, "set 0 < top_p <= 1")
        if self.top_k is not None:
            _check_int(s, "top_k", self.top_k, 1)
        if self.min_p is not None and not (0.0 <= self.min_p <= 1.0):
            _fail(s, "min_p", self.min_p, "set 0 <= min_p <= 1, or None")
        _check_positive(s, "repetition_penalty", self.repetition_penalty)


@dataclass(frozen=True)
class BatchConfig:
    """How a generation batch is cut into micro-steps (see grpo_ray.batching)."""

    per_device_train_batch_size: int = knob(
        16,
        "Completions per process per micro-step. (TRL's default is 8; with num_generations=8 that "
        "is one prompt per cycle, which grpo-ray rejects, so the default here holds two.)",
    )
    gradient_accumulation_steps: int = knob(1, "Micro-steps accumulated per optimizer step.")
    steps_per_generation: int | None = knob(
        None, "Micro-steps fed by one generation batch; None = gradient_accumulation_steps."
    )
    num_processes: int = knob(
        1,
        "Learner processes (data-parallel ranks, one Ray actor each, one torch.distributed group: gloo on "
        "CPU, NCCL on GPU); each trains on its rows of the batch plan and gradients are averaged.",
    )
    train_backend: str = knob(
        "plain",
        "How learner ranks share the work: plain (each rank a full copy of weights, gradients and AdamW "
        "moments; gradients all-reduced), deepspeed_zero2 (DeepSpeed ZeRO-2: gradients and AdamW moments "
        "sharded over the ranks) or deepspeed_zero3 (ZeRO-3: the weights too). DeepSpeed needs "
        "pip install -e '.[gpu]' and run.mode='distributed'.",
    )
    zero_offload_optimizer: bool = knob(
        False,
        "DeepSpeed only: keep the AdamW moments and fp32 master weights in CPU memory (ZeRO-Offload), "
        "stepping there; saves GPU memory for a slower step.",
    )
    learner_resources: tuple[str, ...] = knob(
        (), "Custom Ray resources each learner rank needs, as 'NAME=AMOUNT' (e.g. a node label 'learner_node=1')."
    )
    max_tokens_per_forward: int | None = knob(
        None,
        "Learner execution batches: the rows of one accumulation window (the micro-steps up to an optimizer step) "
        "are sorted by length and packed into forwards of at most this many padded tokens (rows x (longest prompt + "
        "longest completion)); gradients, losses and metrics stay those of the micro-steps above. Larger means fewer, "
        "bigger forwards (less launch overhead on a GPU) for more activation memory. None (auto): the plain "
        "micro-step loop on CPU; on CUDA one micro-batch at the longest rows the run allows "
        "(per_device_train_batch_size x (max_prompt_length + max_completion_length)), so no forward holds more "
        "tokens than the worst micro-step could. 0: the plain micro-step loop everywhere.",
    )

    def __post_init__(self) -> None:
        s = "batch"
        if not isinstance(self.learner_resources, tuple):
            object.__setattr__(self, "learner_resources", tuple(self.learner_resources))
        _check_resources(s, "learner_resources", self.learner_resources)
        _check_choice(s, "train_backend", self.train_backend, ("plain", "deepspeed_zero2", "deepspeed_zero3"))
        _check_int(s, "per_device_train_batch_size", self.per_device_train_batch_size, 1)
        _check_int(s, "gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        if self.steps_per_generation is not None:
            _check_int(s, "steps_per_generation", self.steps_per_generation, 1)
        _check_int(s, "num_processes", self.num_processes, 1)
        if self.zero_offload_optimizer and self.train_backend == "plain":
            _fail(s, "zero_offload_optimizer", True, "it offloads DeepSpeed's optimizer: set batch.train_backend="
                  "'deepspeed_zero2' or 'deepspeed_zero3', or leave it false")
        if self.max_tokens_per_forward is not None:
            _check_int(s, "max_tokens_per_forward", self.max_tokens_per_forward, 0)

    @property
    def steps_per_generation_value(self) -> int:
        return self.gradient_accumulation_steps if self.steps_per_generation is None else self.steps_per_generation

    @property
    def effective_batch_size(self) -> int:
        """Completions per generation cycle: steps_per_generation x num_processes x batch size."""
        return self.steps_per_generation_value * self.num_processes * self.per_device_train_batch_size


@dataclass(frozen=True)
class ModelConfig:
    """The policy model."""

    name_or_path: str = knob("", "Local path (or hub id, where a hub is reachable) of the policy model.")
    dtype: str = knob("float32", "Weights dtype: float32, bfloat16 or float16.")
    gradient_checkpointing: bool = knob(
        False, "Recompute activations in backward to save memory (TRL defaults to true; off suits small models)."
    )
    trust_remote_code: bool = knob(False, "Allow model code shipped with the checkpoint.")
    logprob_impl: str = knob(
        "auto",
        "How the learner turns hidden states into token logprobs: auto (triton on CUDA for bf16/fp16, else torch), "
        "torch or triton (chunked, never the full [B, T, V] logits), or full (plain logits; reference).",
    )
    logprob_chunk_size: int = knob(4096, "Tokens per chunk of the chunked logprob computation.")
    load_in_4bit: bool = knob(
        False,
        "QLoRA: the base model's linear layers frozen in 4-bit NF4 (bitsandbytes; needs lora.enabled). "
        "In colocate mode with rollout.backend=vllm, vLLM quantizes them once and the learner computes "
        "on those same packed weights (one 4-bit copy).",
    )
    fused_loss: bool = knob(
        False,
        "Train with the fused GRPO loss: the gradient to the hidden states (and to the LM head, when it trains) "
        "is formed in the forward pass, chunk by chunk of whole completions, so the logits are never "
        "recomputed (6NHV FLOPs instead of 8NHV; 4NHV instead of 6NHV with a frozen head). Same loss, "
        "gradients and metrics. Ignored with logprob_impl=full.",
    )
    fused_loss_chunk_size: int = knob(
        1024,
        "Tokens per chunk of the fused loss, rounded down to whole completions (at least one): their "
        "full-vocabulary fp32 logits are held at once (tokens x vocabulary x 4 bytes; 0.58 GiB at 1024 "
        "tokens and a 151,936-token vocabulary). A completion longer than this is done alone in two passes.",
    )

    def __post_init__(self) -> None:
        _check_choice("model", "dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _check_choice("model", "logprob_impl", self.logprob_impl, ("auto", "torch", "triton", "full"))
        _check_int("model", "logprob_chunk_size", self.logprob_chunk_size, 1)
        _check_int("model", "fused_loss_chunk_size", self.fused_loss_chunk_size, 1)


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters through peft; disabled = full fine-tuning."""

    enabled: bool = knob(True, "Train LoRA adapters (true) or every weight (false).")
    r: int = knob(16, "LoRA rank.")
    alpha: int = knob(32, "LoRA scaling numerator (scale = alpha / r).")
    dropout: float = knob(0.0, "Dropout on the LoRA branch.")
    target_modules: tuple[str, ...] = knob(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        "Module names that get adapters.",
    )

    def __post_init__(self) -> None:
        if not isinstance(self.target_modules, tuple):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        _check_int("lora", "r", self.r, 1)
        _check_int("lora", "alpha", self.alpha, 1)
        if not 0.0 <= self.dropout < 1.0:
            _fail("lora", "dropout", self.dropout, "set 0 <= dropout < 1")
        if self.enabled and not self.target_modules:
            _fail("lora", "target_modules", self.target_modules, "name at least one module, or set lora.enabled=false")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its schedule."""

    learning_rate: float = knob(1e-6, "Peak learning rate (TRL's GRPO default).")
    weight_decay: float = knob(0.0, "AdamW weight decay.")
    adam_beta1: float = knob(0.9, "AdamW beta1.")
    adam_beta2: float = knob(0.999, "AdamW beta2 (the seed tutorials use 0.99).")
    max_grad_norm: float = knob(1.0, "Clip the global gradient norm to this value; 0 disables.")
    lr_scheduler_type: str = knob("linear", "constant, linear or cosine decay after warm-up.")
    warmup_ratio: float = knob(0.0, "Fraction of optimizer steps spent warming up linearly.")

    def __post_init__(self) -> None:
        s = "optim"
        _check_positive(s, "learning_rate", self.learning_rate)
        _check_positive(s, "weight_decay", self.weight_decay, allow_zero=True)
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                _fail(s, name, value, "set 0 <= beta < 1")
        _check_positive(s, "max_grad_norm", self.max_grad_norm, allow_zero=True)
        _check_choice(s, "lr_scheduler_type", self.lr_scheduler_type, ("constant", "linear", "cosine"))
        if not isinstance(self.warmup_ratio, (int, float)) or not 0.0 <= self.warmup_ratio < 1.0:
            _fail(s, "warmup_ratio", self.warmup_ratio, "set 0 <= warmup_ratio < 1")


@dataclass(frozen=True)
class RolloutConfig:
    """Rollout workers: how many, which generation engine they own, and how weights reach them."""

    backend: str = knob("hf", "Generation engine: hf (transformers generate, CPU or GPU) or vllm (GPU).")
    num_workers: int = knob(1, "Rollout workers (Ray actors); prompts are split evenly across them.")
    num_cpus_per_worker: float = knob(1.0, "CPUs Ray reserves for each rollout worker.")
    num_gpus_per_worker: float = knob(0.0, "GPUs Ray reserves for each rollout worker.")
    sync_check: bool = knob(
        True,
        "Stale-weight guard: after every weight sync, compare the engine's and the learner's logprobs "
        "of one fixed probe sequence and stop the run if they differ by more than sync_check_tolerance.",
    )
    sync_check_tolerance: float | None = knob(
        None,
        "Largest mean absolute difference of the probe's per-token logprobs; None = 1e-3 for float32 "
        "weights, 0.05 for 16-bit (vLLM and transformers kernels round differently).",
    )
    max_num_seqs: int | None = knob(
        None, "vllm: sequences decoded at once; None = the completions of one generation batch per worker."
    )
    kv_cache_tokens: int | None = knob(
        None,
        "vllm: tokens of KV cache to allocate; None = sized from the batch (max_num_seqs x "
        "(max_prompt_length + max_completion_length)), not from a share of GPU memory.",
    )
    enforce_eager: bool = knob(
        False, "vllm: no CUDA graphs and no torch.compile (fastest start, slowest decoding: 5-10x on small batches)."
    )
    sync_backend: str = knob(
        "object_store",
        "How weights reach the rollout workers in distributed mode: object_store (one ray.put, every worker "
        "fetches) or collective (torch.distributed broadcast from learner rank 0 in buckets: gloo on CPU, NCCL on GPU).",
    )
    sync_timeout_s: float = knob(
        60.0,
        "collective sync: seconds one weight broadcast may take; a rollout worker that died or stalls is named "
        "in an error within this time instead of hanging the run.",
    )
    sync_bucket_mb: float = knob(256.0, "collective sync: most megabytes per broadcast bucket.")
    resources: tuple[str, ...] = knob(
        (), "Custom Ray resources each rollout worker needs, as 'NAME=AMOUNT' (e.g. a node label 'rollout_node=1')."
    )
    cudagraph_capture_sizes: tuple[int, ...] | None = knob(
        None,
        "vllm: decode batch sizes to capture CUDA graphs for (a batch between two sizes runs padded to the "
        "larger); None = only what a run can produce: 1, 2, 4, 8, ... and the 1.5x points between them, up to "
        "and including the engine's max_num_seqs.",
    )
    compile: bool = knob(
        True,
        "vllm: torch.compile the model (vLLM's Inductor backend) and capture piecewise and full CUDA graphs; "
        "false = full CUDA graphs of decode steps only, no compilation (faster first start, prefill eager). "
        "The compile cache under $VLLM_CACHE_ROOT (~/.cache/vllm) makes later starts faster.",
    )
    max_staleness: int = knob(
        0,
        "Asynchronous rollouts: generation runs up to this many weight updates ahead of the learner (one update per "
        "generation cycle: an optimizer step when a cycle takes one), so a cycle's rollout overlaps the learner's "
        "training on earlier ones; a sample generated with the weights of update v is trained at update v + "
        "max_staleness at the latest, never later (a rollout that would be waits for newer weights). 0 = the "
        "synchronous loop (generate, score, train, sync in turn).",
    )
    off_policy_correction: str = knob(
        "tis",
        "How the loss treats samples from older weights (the engine's per-token logprobs are the behaviour policy): "
        "tis (the PPO ratio against the learner's logprobs when it starts the batch, each token weighted by the "
        "engine correction of grpo.vllm_importance_sampling_mode, as for the engine's numerics) or decoupled "
        "(AReaL: the proximal policy is the learner at the start of each optimizer step, so the behaviour weight pi_prox/pi_engine, capped as grpo.vllm_importance_sampling_* say, carries the whole "
        "correction and no old-logprob pass runs). Both need grpo.vllm_importance_sampling_correction.",
    )

    def __post_init__(self) -> None:
        if not isinstance(self.resources, tuple):
            object.__setattr__(self, "resources", tuple(self.resources))
        if self.cudagraph_capture_sizes is not None:
            sizes = self.cudagraph_capture_sizes
            if not isinstance(sizes, tuple):
                sizes = tuple(sizes)
                object.__setattr__(self, "cudagraph_capture_sizes", sizes)
            if not sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
                _fail("rollout", "cudagraph_capture_sizes", sizes,
                      "give batch sizes as integers >= 1 (e.g. 1,2,4,8,16), or None to derive them from max_num_seqs")
        _check_resources("rollout", "resources", self.resources)
        _check_choice("rollout", "sync_backend", self.sync_backend, ("object_store", "collective"))
        _check_positive("rollout", "sync_timeout_s", self.sync_timeout_s)
        _check_positive("rollout", "sync_bucket_mb", self.sync_bucket_mb)
        _check_choice("rollout", "backend", self.backend, ("hf", "vllm"))
        _check_int("rollout", "num_workers", self.num_workers, 1)
        _check_positive("rollout", "num_cpus_per_worker", self.num_cpus_per_worker, allow_zero=True)
        _check_positive("rollout", "num_gpus_per_worker", self.num_gpus_per_worker, allow_zero=True)
        if self.sync_check_tolerance is not None:
            _check_positive("rollout", "sync_check_tolerance", self.sync_check_tolerance)
        if self.max_num_seqs is not None:
            _check_int("rollout", "max_num_seqs", self.max_num_seqs, 1)
        if self.kv_cache_tokens is not None:
            _check_int("rollout", "kv_cache_tokens", self.kv_cache_tokens, 1)
        _check_int("rollout", "max_staleness", self.max_staleness, 0)
        _check_choice("rollout", "off_policy_correction", self.off_policy_correction, OFF_POLICY_CORRECTIONS)


@dataclass(frozen=True)
class RewardConfig:
    """Reward functions and the worker pool that runs them."""

    functions: tuple[str, ...] = knob(
        (), "Reward functions by registry name or 'module:function' import path."
    )
    num_workers: int = knob(1, "Reward workers (Ray actors); completions are split across them.")
    processes_per_worker: int = knob(1, "Processes each reward worker runs functions in.")
    timeout_s: float = knob(30.0, "Seconds one reward call may take before it is killed and penalised.")
    penalty: float = knob(0.0, "Score given to every completion of a call that timed out or crashed.")
    resources: tuple[str, ...] = knob(
        (), "Custom Ray resources each reward worker needs, as 'NAME=AMOUNT' (e.g. a node label 'reward_node=1')."
    )

    def __post_init__(self) -> None:
        if not isinstance(self.functions, tuple):
            object.__setattr__(self, "functions", tuple(self.functions))
        if not isinstance(self.resources, tuple):
            object.__setattr__(self, "resources", tuple(self.resources))
        _check_resources("reward", "resources", self.resources)
        for name in self.functions:
            if not isinstance(name, str) or not name.strip():
                _fail("reward", "functions", self.functions, "every entry must be a registry name or 'module:function'")
        _check_int("reward", "num_workers", self.num_workers, 1)
        _check_int("reward", "processes_per_worker", self.processes_per_worker, 1)
        _check_positive("reward", "timeout_s", self.timeout_s)
        if not isinstance(self.penalty, (int, float)) or not math.isfinite(self.penalty):
            _fail("reward", "penalty", self.penalty, "set a finite number")


@dataclass(frozen=True)
class RunConfig:
    """Length of the run, seeds, logging and checkpoints."""

    output_dir: str = knob("outputs/run", "Where logs (metrics.jsonl) and checkpoints go.")
    max_steps: int = knob(100, "Optimizer steps to train for.")
    seed: int = knob(42, "Seed for data order, sampling and initialisation.")
    logging_steps: int = knob(1, "Log metrics every this many optimizer steps.")
    save_steps: int = knob(
        0,
        "Save a checkpoint every this many optimizer steps; 0 = only at the end. Checkpoints are taken "
        "between generation cycles, so this must be a multiple of the optimizer steps per cycle.",
    )
    keep_last_n: int = knob(0, "Keep only the newest N step checkpoints (the final one always stays); 0 = keep all.")
    resume: str | None = knob(
        None,
        "Resume from a checkpoint: 'latest' (the newest in run.output_dir) or a checkpoint directory. "
        "None = a fresh run, refused when run.output_dir already holds one.",
    )
    max_worker_restarts: int = knob(
        10, "Times each rollout or reward worker that died is restarted (and its batch retried) before the run fails."
    )
    max_consecutive_skips: int = knob(
        10,
        "Stop the run, saving a checkpoint, after this many optimizer steps in a row were skipped for a "
        "non-finite loss or gradient.",
    )
    report_to: tuple[str, ...] = knob(
        (), "Extra metric sinks besides metrics.jsonl: tensorboard, wandb, swanlab (each needs its package)."
    )
    ray_address: str | None = knob(
        None, "Ray cluster to join ('auto' = the one `ray start` runs here); None = $RAY_ADDRESS if set, else a new local one."
    )
    mode: str = knob(
        "auto",
        "Placement: colocate (learner and one rollout engine in one actor on one GPU, one copy of the base "
        "weights, the engine's KV cache released while the learner trains), distributed (learner and rollout "
        "workers as separate actors, weights sent to them), auto (colocate when this machine sees exactly "
        "one GPU and rollout.num_workers is 1, else distributed).",
    )

    def __post_init__(self) -> None:
        if not isinstance(self.report_to, tuple):
            object.__setattr__(self, "report_to", tuple(self.report_to))
        if not isinstance(self.output_dir, str) or not self.output_dir:
            _fail("run", "output_dir", self.output_dir, "give a directory path")
        _check_int("run", "max_steps", self.max_steps, 1)
        _check_int("run", "seed", self.seed, 0)
        _check_int("run", "logging_steps", self.logging_steps, 1)
        _check_int("run", "save_steps", self.save_steps, 0)
        _check_choice("run", "mode", self.mode, ("auto", "colocate", "distributed"))
        _check_int("run", "keep_last_n", self.keep_last_n, 0)
        if self.resume is not None and (not isinstance(self.resume, str) or not self.resume.strip()):
            _fail("run", "resume", self.resume, "give 'latest' or a checkpoint directory, or None")
        _check_int("run", "max_worker_restarts", self.max_worker_restarts, 0)
        _check_int("run", "max_consecutive_skips", self.max_consecutive_skips, 1)
        for sink in self.report_to:
            _check_choice("run", "report_to", sink, REPORT_SINKS)


@dataclass(frozen=True)
class DataConfig:
    """The prompt dataset of `python -m grpo_ray train`: where it is, its columns, how prompts are built."""

    dataset: str = knob(
        "", "Hub dataset name, a local directory (train.jsonl, test.jsonl, ...) or one JSON/JSONL/CSV/Parquet file."
    )
    subset: str | None = knob(None, "Hub dataset configuration, e.g. 'main' for openai/gsm8k; unused for local data.")
    train_split: str = knob("train", "Split trained on.")
    eval_split: str | None = knob("test", "Split of the pass@1 eval; None = no eval.")
    eval_dataset: str | None = knob(None, "Where the eval split lives when not in data.dataset (same forms); None = data.dataset.")
    prompt_column: str = knob("prompt", "Column with the question: a string, or chat messages.")
    answer_column: str | None = knob(
        "answer",
        "Column with the reference answer (a worked solution ending in '#### N' counts as N); reward functions "
        "get it as `answer`, the eval and the SFT warm-up need it. None = no answers.",
    )
    format: str = knob(
        "none",
        "Answer format the system prompt asks for and the SFT warm-up teaches: none, qwen3 (the Qwen3 tutorial's "
        "<start_working_out>/<SOLUTION> tags), gsm8k (<reasoning>/<answer>), or 'module:OBJECT' naming a "
        "Qwen3Format or XMLFormat with your own tags.",
    )
    system_prompt: str | None = knob(None, "System message; None = the one of data.format (none has no system message).")
    chat_template: str = knob(
        "model",
        "How a prompt becomes text: model (the tokenizer's own chat template), tutorial (the Qwen3 tutorial's: "
        "system + EOS, the question, then the reasoning tag), none (system prompt and question as plain text), "
        "or the path of a Jinja template file.",
    )
    max_rows: int | None = knob(None, "Train on at most this many rows (the first ones); None = all.")
    eval_holdout: float = knob(
        0.1,
        "A single-file data.dataset has no splits: when the eval reads from that same file, this fraction of its rows "
        "(drawn with run.seed; at least 1, at most eval.limit) is held out of training for the eval; 0 = refuse to "
        "evaluate on the training file (set data.eval_dataset or data.eval_split=none instead).",
    )

    def __post_init__(self) -> None:
        s = "data"
        for name in ("train_split", "prompt_column", "format", "chat_template"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                _fail(s, name, getattr(self, name), "give a non-empty string")
        if self.max_rows is not None:
            _check_int(s, "max_rows", self.max_rows, 1)
        _check_positive(s, "eval_holdout", self.eval_holdout, allow_zero=True)
        if self.eval_holdout >= 1:
            _fail(s, "eval_holdout", self.eval_holdout, "set a fraction in [0, 1)")


@dataclass(frozen=True)
class SFTConfig:
    """Optional supervised warm-up before GRPO that teaches the answer format (the tutorials' SFT step)."""

    steps: int = knob(
        0, "Optimizer steps of supervised training on (prompt, answer in data.format) pairs before GRPO; 0 = none."
    )
    batch_size: int = knob(8, "Examples per warm-up step.")
    learning_rate: float = knob(2e-4, "Constant AdamW learning rate of the warm-up (the tutorial's 2e-4).")
    max_grad_norm: float = knob(1.0, "Clip the warm-up's gradient norm to this value (TRL's SFT default); 0 disables.")

    def __post_init__(self) -> None:
        _check_int("sft", "steps", self.steps, 0)
        _check_int("sft", "batch_size", self.batch_size, 1)
        _check_positive("sft", "learning_rate", self.learning_rate)
        _check_positive("sft", "max_grad_norm", self.max_grad_norm, allow_zero=True)


@dataclass(frozen=True)
class EvalConfig:
    """Greedy pass@1 on the eval split: before training, every eval.steps steps, and at the end."""

    limit: int | None = knob(200, "Eval questions (the first ones of the eval split); 0 = no eval, None = all.")
    steps: int = knob(0, "Evaluate every this many optimizer steps too; 0 = only before training and at the end.")
    judge: str = knob(
        "math", "Reward function that marks an eval answer correct (score > 0); 'math' is the math verifier."
    )
    samples: int = knob(2, "Completions printed (question, response, extracted answer, reward) at every eval.")

    def __post_init__(self) -> None:
        if self.limit is not None:
            _check_int("eval", "limit", self.limit, 0)
        _check_int("eval", "steps", self.steps, 0)
        _check_int("eval", "samples", self.samples, 0)
        if not isinstance(self.judge, str) or not self.judge.strip():
            _fail("eval", "judge", self.judge, "name a reward function, e.g. 'math'")


@dataclass(frozen=True)
class ExportConfig:
    """What is written after training besides the final checkpoint (a LoRA adapter or full model)."""

    merged: bool = knob(True, "Write a merged model (LoRA folded into the base) that from_pretrained and vLLM load.")
    dtype: str = knob("bfloat16", "dtype of the merged model: bfloat16, float16 or float32.")
    gguf: str | None = knob(
        None, "Also convert the merged model to GGUF with llama.cpp's convert_hf_to_gguf.py: f32, f16, bf16, q8_0 or auto; None = no GGUF."
    )
    llama_cpp: str | None = knob(
        None, "llama.cpp checkout holding convert_hf_to_gguf.py; None = $LLAMA_CPP_DIR, else the script on PATH."
    )

    def __post_init__(self) -> None:
        _check_choice("export", "dtype", self.dtype, ("bfloat16", "float16", "float32"))
        if self.gguf is not None:
            _check_choice("export", "gguf", self.gguf, GGUF_TYPES)
            if not self.merged:
                _fail("export", "gguf", self.gguf, "GGUF is converted from the merged model: set export.merged=true")


def batch_fix(batch: BatchConfig, num_generations: int) -> str:
    """The nearest per_device_train_batch_size, steps_per_generation and num_generations that
    each make a valid cycle (completions divisible by num_generations, at least two prompts)."""
    g, effective = num_generations, batch.effective_batch_size

    def nearest(current: int, per_unit: int) -> int:  # the value v nearest current with per_unit * v valid
        fits = [v for v in range(1, current + 2 * g + 1) if (per_unit * v) % g == 0 and per_unit * v >= 2 * g]
        return min(fits, key=lambda v: (abs(v - current), -v))

    size, spg = batch.per_device_train_batch_size, batch.steps_per_generation_value
    fixes = [f"batch.per_device_train_batch_size={nearest(size, effective // size)}"]
    fixes.append(f"batch.steps_per_generation={nearest(spg, effective // spg)}")
    groups = [n for n in range(2, effective // 2 + 1) if effective % n == 0]
    if groups:
        fixes.append(f"grpo.num_generations={min(groups, key=lambda n: (abs(n - g), -n))}")
    return "set " + ", or ".join(fixes)


@dataclass(frozen=True)
class TrainConfig:
    """A whole run: every section, plus the checks that span sections."""

    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        effective = self.batch.effective_batch_size
        g = self.grpo.num_generations
        if effective % g or effective // g < 2:
            what = (
                f"is not divisible by grpo.num_generations={g}" if effective % g else
                f"holds {effective // g} unique prompt(s) per generation cycle ({effective} completions / "
                f"num_generations={g}) and GRPO needs at least 2"
            )
            raise ConfigError(
                f"batch: effective batch size = steps_per_generation x num_processes x "
                f"per_device_train_batch_size = {effective} {what}; {batch_fix(self.batch, g)}"
            )
        n_funcs = len(self.reward.functions)
        weights = self.grpo.reward_weights
        if weights is not None and n_funcs and len(weights) != n_funcs:
            raise ConfigError(
                f"grpo.reward_weights has {len(weights)} entries but reward.functions names "
                f"{n_funcs}; give one weight per function"
            )
        per_cycle = self.batch.steps_per_generation_value * self.grpo.num_iterations
        steps_per_cycle, rest = divmod(per_cycle, self.batch.gradient_accumulation_steps)
        if self.run.save_steps and not rest and self.run.save_steps % steps_per_cycle:
            raise ConfigError(
                f"run.save_steps={self.run.save_steps} is invalid: a generation cycle takes {steps_per_cycle} "
                f"optimizer steps and checkpoints are taken between cycles; set a multiple of {steps_per_cycle}"
            )
        if self.model.load_in_4bit and not self.lora.enabled:
            raise ConfigError(
                "model.load_in_4bit=true freezes the base weights in 4-bit, so only LoRA adapters can train: "
                "set lora.enabled=true, or model.load_in_4bit=false for full fine-tuning"
            )
        if self.run.mode == "colocate" and self.rollout.num_workers != 1:
            raise ConfigError(
                f"run.mode='colocate' runs one engine beside the learner, but rollout.num_workers="
                f"{self.rollout.num_workers}: set rollout.num_workers=1 or run.mode='distributed'"
            )
        if self.run.mode == "colocate" and self.batch.num_processes != 1:
            raise ConfigError(
                f"run.mode='colocate' runs one learner process beside the engine, but batch.num_processes="
                f"{self.batch.num_processes}: set batch.num_processes=1 or run.mode='distributed'"
            )
        deepspeed = f"batch.train_backend={self.batch.train_backend!r}"
        if self.batch.train_backend != "plain" and self.run.mode == "colocate":
            raise ConfigError(
                f"{deepspeed} re-lays the weights out in DeepSpeed's buffers, and run.mode='colocate' builds the "
                "learner on the engine's weight tensors: set run.mode='distributed' or batch.train_backend='plain'"
            )
        if self.batch.train_backend != "plain" and self.model.load_in_4bit:
            raise ConfigError(
                f"{deepspeed} with model.load_in_4bit=true is not supported (DeepSpeed would shard or re-lay "
                "out the packed 4-bit weights): set batch.train_backend='plain' or model.load_in_4bit=false"
            )
        if self.batch.train_backend != "plain" and rest:
            raise ConfigError(
                f"{deepspeed}: an accumulation window of gradient_accumulation_steps="
                f"{self.batch.gradient_accumulation_steps} micro-steps runs on past the end of a generation cycle "
                f"({per_cycle} micro-steps), and DeepSpeed's checkpoints do not hold a window's pending gradients: "
                f"set batch.gradient_accumulation_steps to a divisor of {per_cycle}, or batch.train_backend='plain'"
            )
        stale = f"rollout.max_staleness={self.rollout.max_staleness}"
        r = self.rollout
        if (r.max_staleness or r.off_policy_correction == "decoupled") and not self.grpo.vllm_importance_sampling_correction:
            why = (f"{stale} trains on samples from older weights" if r.max_staleness else
                   "rollout.off_policy_correction='decoupled' puts its behaviour weight in the importance-sampling term")
            raise ConfigError(
                f"{why}, and the engine's logprobs enter the loss only through grpo.vllm_importance_sampling_correction, "
                "which is off: set grpo.vllm_importance_sampling_correction=true (or rollout.max_staleness=0 and "
                "rollout.off_policy_correction='tis')"
            )


SECTIONS: dict[str, type] = {
    # Section name (the TrainConfig field) -> its dataclass, in declaration order.
    "grpo": GRPOConfig,
    "generation": GenerationConfig,
    "batch": BatchConfig,
    "model": ModelConfig,
    "lora": LoraConfig,
    "optim": OptimConfig,
    "rollout": RolloutConfig,
    "reward": RewardConfig,
    "run": RunConfig,
    "data": DataConfig,
    "sft": SFTConfig,
    "eval": EvalConfig,
    "export": ExportConfig,
}
