"""The GRPO objective on per-token log-probabilities: policy term, token weights, KL, reduction.

Pure tensor math (no Ray, no model, no GPU needed). All per-token tensors are ``[B, T]``
over completion tokens, advantages ``[B]``. The value and gradient equal TRL 1.16's
``GRPOTrainer._compute_loss`` for every ``loss_type`` and knob it has; the keyword arguments
``gradient_accumulation_steps``, ``steps_per_generation`` and ``num_processes`` reproduce its
scaling across micro-steps and processes.

Per token t of completion i, with r the importance ratio pi/pi_old (per token, or per sequence
with ``importance_sampling_level='sequence'``, GSPO)::

    l_t  = policy term of loss_type (r, A_i)          grpo_ray.surrogates
    l_t *= off-policy sequence mask (OPSM)            if off_policy_mask_threshold is set
    l_t *= high-entropy token mask                    if top_entropy_quantile < 1
    l_t *= engine correction pi_old / pi_sampler      if sampler logprobs are given (not vespo,
                                                      which folds it into its own weight)
    l_t += beta * KL_t (x r if use_bias_correction_kl)   KL_t: the k1/k2/k3 estimator

(the weights and masks are in ``grpo_ray.loss_weights``), and the per-token losses are reduced
by the ``loss_type`` normaliser (``LOSS_REDUCERS``). With ``entropy_coef`` (or adaptive entropy
control, ``grpo_ray.entropy_control``) the loss is then ``L_policy - c * H``, H the mean
per-token entropy over the trained tokens (:func:`entropy_bonus`), whatever the normaliser.

Slices of a micro-batch: the learner may call :func:`grpo_loss` on some rows of a user's
micro-batch at a time; ``micro_batch_rows`` and ``micro_batch_tokens`` then carry that
micro-batch's normalisers so the slices' losses sum to the micro-batch's. Every term is
local to its row except the high-entropy quantile (:func:`needs_whole_micro_batch`), which with
an entropy bonus also sets the bonus's token count.
"""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple

import torch

from grpo_ray.config import GRPOConfig
from grpo_ray.loss_weights import engine_importance_weights, high_entropy_mask, off_policy_sequence_mask
from grpo_ray.surrogates import Metrics, masked_mean, policy_term


# --- loss_type normalisers ------------------------------------------------------------------


class Normalisers(NamedTuple):
    """What the reducers divide by: the user's micro-batch rows and loss tokens, and the dapo /
    cispo / vespo token count already rescaled to one accumulation window."""

    rows: float
    tokens: torch.Tensor
    num_items: torch.Tensor


def _reduce_grpo(per_token: torch.Tensor, mask: torch.Tensor, config: GRPOConfig, n: Normalisers) -> torch.Tensor:
    """GRPO (Shao et al. 2024, arXiv:2402.03300, eq. 3), and SAPO's normaliser: mean over each
    sequence's tokens, then mean over sequences. Shorter completions weigh more per token."""
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / n.rows


def _reduce_dr_grpo(per_token: torch.Tensor, mask: torch.Tensor, config: GRPOConfig, n: Normalisers) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv:2503.20783):
    sum over tokens divided by the constant B x max_completion_length, removing length bias."""
    return (per_token * mask).sum() / (n.rows * config.max_completion_length)


def _reduce_dapo(per_token: torch.Tensor, mask: torch.Tensor, config: GRPOConfig, n: Normalisers) -> torch.Tensor:
    """DAPO (Yu et al. 2025, arXiv:2503.14476, token-level policy gradient loss), and the
    normaliser of cispo and vespo: sum over tokens divided by the number of completion tokens in
    the whole generation batch, so every token weighs the same whatever micro-batch it lands in."""
    return (per_token * mask).sum() / n.num_items


def _reduce_bnpo(per_token: torch.Tensor, mask: torch.Tensor, config: GRPOConfig, n: Normalisers) -> torch.Tensor:
    """BNPO (batch-normalised policy optimisation, as in TRL): sum over tokens divided by the
    number of completion tokens of this local micro-batch only."""
    return (per_token * mask).sum() / n.tokens


def _reduce_luspo(per_token: torch.Tensor, mask: torch.Tensor, config: GRPOConfig, n: Normalisers) -> torch.Tensor:
    """LUSPO (length-unbiased sequence policy optimisation, arXiv:2602.05261): GSPO's sequence
    loss weighted by the sequence's length, i.e. the sum over each sequence's tokens, then the
    mean over sequences (GSPO's per-sequence mean favours short completions)."""
    return (per_token * mask).sum() / n.rows


LOSS_REDUCERS: dict[str, Callable[..., torch.Tensor]] = {
    "grpo": _reduce_grpo,
    "dr_grpo": _reduce_dr_grpo,
    "dapo": _reduce_dapo,
    "bnpo": _reduce_bnpo,
    "cispo": _reduce_dapo,
    "sapo": _reduce_grpo,
    "luspo": _reduce_luspo,
    "vespo": _reduce_dapo,
}
# Normalised by the whole generation batch's tokens (rescaled per window), not per micro-step.
GLOBAL_TOKEN_LOSS_TYPES = ("dapo", "cispo", "vespo")


# --- the loss ---------------------------------------------------------------------------------


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman 2020, "Approximating
    KL Divergence", http://joschu.net/blog/kl-approx.html), with x = log pi_ref - log pi:
    k1 = -x (unbiased, high variance, can be negative), k2 = x^2 / 2 (biased, low variance),
    k3 = exp(x) - x - 1 (unbiased, low variance, >= 0; TRL's and the GRPO paper's). ``[B, T]``."""
    x = ref_logps - logps
    if estimator == "k3":
        return torch.exp(x) - x - 1
    if estimator == "k2":
        return 0.5 * x * x
    if estimator == "k1":
        return -x
    raise ValueError(f"unknown kl_estimator {estimator!r}")


def entropy_bonus(entropies: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The entropy bonus H of the objective ``L = L_policy - c * H`` (entropy regularisation, as in
    A3C, Mnih et al. 2016, arXiv:1602.01783; TRL 1.16's ``entropy_coef``): the mean per-token
    entropy over ``mask``, i.e. ``sum(entropies * mask) / tokens`` with ``tokens`` the mask's
    token count in the whole micro-batch (a slice's share when called on a slice). Not
    rescaled by the loss_type's normaliser, so c means the same for every loss_type.
    Differentiable through ``entropies`` (``[B, T]``, with their gradient to the logits)."""
    return (entropies * mask).sum() / tokens


def entropy_bonus_enabled(config: GRPOConfig) -> bool:
    """True when the loss has an entropy bonus term: a static ``entropy_coef != 0``, or adaptive
    control (whose coefficient may be 0 for a while and come back)."""
    return config.entropy_coef != 0.0 or config.use_adaptive_entropy


#: Metrics :func:`grpo_loss` adds under adaptive entropy control: the entropy summed over the
#: bonus's tokens, and their count; the controller (``grpo_ray.entropy_control``) takes them out.
ENTROPY_SUM, ENTROPY_TOKENS = "entropy_control/entropy_sum", "entropy_control/tokens"


def needs_whole_micro_batch(config: GRPOConfig) -> bool:
    """True when the loss takes a statistic over the whole user micro-batch (the high-entropy
    quantile of ``top_entropy_quantile < 1``), so calling :func:`grpo_loss` on row slices
    changes it; the caller then passes whole micro-batches (or that statistic's pool, the
    ``entropy_pool`` keyword; not enough with an entropy bonus, whose divisor, the
    micro-batch's high-entropy tokens, grpo_loss then counts itself: whole micro-batches only)."""
    return config.top_entropy_quantile < 1.0


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: GRPOConfig,
    *,
    num_items_in_batch: torch.Tensor | float | None = None,
    sampling_logps: torch.Tensor | None = None,
    entropies: torch.Tensor | None = None,
    entropy_pool: torch.Tensor | None = None,
    gradient_accumulation_steps: int = 1,
    steps_per_generation: int = 1,
    num_processes: int = 1,
    micro_batch_rows: int | None = None,
    micro_batch_tokens: torch.Tensor | float | None = None,
    entropy_coef: float | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """The GRPO loss of one micro-batch (or a row slice of one) and its metrics.

    Args:
        logps: ``[B, T]`` log-probabilities of the completion tokens under the policy (with grad).
        old_logps: ``[B, T]`` under the policy that generated the batch; None means the batch
            is on-policy (``num_iterations == 1``) and the detached ``logps`` stand in.
        ref_logps: ``[B, T]`` under the reference policy; needed only when ``config.beta > 0``.
        advantages: ``[B]``.
        mask: ``[B, T]`` 1 for completion tokens that count, 0 for padding (any dtype).
        config: the algorithm's knobs.
        num_items_in_batch: completion tokens in the whole generation batch (all processes),
            the dapo / cispo / vespo normaliser; None means ``mask.sum()``.
        sampling_logps: ``[B, T]`` the rollout engine's logprobs (NaN where it gave none); with
            ``config.vllm_importance_sampling_correction`` they enable the engine correction,
            and ``off_policy_mask_threshold`` measures the drift from them (else from old).
        entropies: ``[B, T]`` per-token entropies: the ``entropy`` metric; needed by
            ``top_entropy_quantile < 1`` and by the entropy bonus (which differentiates them:
            pass them with their gradient, e.g. from ``token_logprobs(..., with_entropy=True)``).
        entropy_pool: 1-D entropies the ``top_entropy_quantile`` threshold is taken over: the
            loss tokens of the whole user micro-batch on every process; None = this call's own.
        gradient_accumulation_steps, steps_per_generation, num_processes: TRL's scaling
            across micro-steps and ranks. Every loss_type but dapo, cispo and vespo is divided
            by the accumulation steps. Their normaliser, which counts the whole generation
            batch, is rescaled to one accumulation window: ``num_items / num_processes x
            gradient_accumulation_steps / steps_per_generation`` (DDP averages gradients).
        micro_batch_rows: rows of the user micro-batch this call is a slice of (grpo, sapo,
            luspo and dr_grpo divide by it); None = ``B``.
        micro_batch_tokens: loss tokens of that micro-batch (bnpo and the entropy bonus divide
            by it); None = ``mask.sum()``. With ``top_entropy_quantile < 1`` the bonus divides by
            this call's high-entropy tokens: an entropy bonus then needs whole micro-batches.
        entropy_coef: the entropy bonus's coefficient for this step; None = ``config.entropy_coef``.
            Under ``use_adaptive_entropy`` it is required: the controller's current coefficient
            (``EntropyControl.applied_coef``), the same for every micro-step of a window.

    Returns:
        ``(loss, metrics)``; metrics are detached 0-dim tensors (means over this call's rows):
        ``clip_ratio/low_mean``, ``clip_ratio/high_mean``, ``clip_ratio/region_mean`` for the
        clipped types, ``cispo_clip_ratio``, ``vespo/phi_seq_mean``, and ``kl``, ``entropy``,
        ``is_ratio_mean`` when they apply. With an entropy bonus, ``policy_loss`` (the loss
        without the bonus, before the accumulation scaling, as TRL logs it; a sum over slices);
        under adaptive control also ``ENTROPY_SUM`` and ``ENTROPY_TOKENS`` (sums over this
        call's bonus tokens, for the controller).
    """
    if logps.dim() != 2:
        raise ValueError(f"logps must be [B, T], got shape {tuple(logps.shape)}")
    if advantages.shape != logps.shape[:1]:
        raise ValueError(f"advantages must be [B]={tuple(logps.shape[:1])}, got {tuple(advantages.shape)}")
    if config.beta != 0.0 and ref_logps is None:
        raise ValueError("config.beta > 0 needs ref_logps (the reference policy's logprobs)")
    if needs_whole_micro_batch(config) and entropies is None:
        raise ValueError("config.top_entropy_quantile < 1 needs entropies (the per-token entropies)")
    bonus = entropy_bonus_enabled(config)
    if bonus and entropies is None:
        raise ValueError("an entropy bonus (config.entropy_coef != 0 or use_adaptive_entropy) needs entropies, "
                         "with their gradient")
    if entropy_coef is None:
        if config.use_adaptive_entropy:
            raise ValueError("config.use_adaptive_entropy needs entropy_coef=, the coefficient the controller "
                             "applies now (grpo_ray.entropy_control.EntropyControl.applied_coef)")
        entropy_coef = config.entropy_coef
    mask = mask.to(logps.dtype)
    rows = logps.shape[0] if micro_batch_rows is None else micro_batch_rows
    tokens: Count = mask.sum() if micro_batch_tokens is None else micro_batch_tokens
    tokens = tokens.clamp(min=1.0) if torch.is_tensor(tokens) else max(tokens, 1.0)
    if old_logps is None:
        old_logps = logps.detach()
    adv = advantages.unsqueeze(1)  # [B, 1]
    metrics: Metrics = {}

    engine_is = None
    if sampling_logps is not None and config.vllm_importance_sampling_correction:
        engine_is = engine_importance_weights(
            old_logps, sampling_logps, mask, config.vllm_importance_sampling_mode,
            config.vllm_importance_sampling_clip_min, config.vllm_importance_sampling_clip_max,
        )
        metrics["is_ratio_mean"] = masked_mean(engine_is, mask).detach()
    per_token, coef, policy_metrics = policy_term(config, logps, logps - old_logps, adv, mask, engine_is)
    metrics.update(policy_metrics)
    if config.off_policy_mask_threshold is not None:
        behaviour = old_logps if sampling_logps is None else sampling_logps
        per_token = per_token * off_policy_sequence_mask(adv, logps, behaviour, mask, config.off_policy_mask_threshold)
    entropy_mask = None
    if config.top_entropy_quantile < 1.0:
        entropy_mask = high_entropy_mask(entropies, mask, config.top_entropy_quantile, entropy_pool)
        per_token = per_token * entropy_mask
    if engine_is is not None and config.loss_type != "vespo":
        per_token = per_token * engine_is
    if config.beta != 0.0:
        per_token_kl = kl_estimate(logps, ref_logps, config.kl_estimator)
        if config.use_bias_correction_kl:
            per_token_kl = per_token_kl * coef  # DeepSeek-V3.2 (arXiv:2512.02556): unbiased KL gradient off-policy
        per_token = per_token + config.beta * per_token_kl
        metrics["kl"] = masked_mean(per_token_kl, mask).detach()

    def as_tensor(x: torch.Tensor | float | None, default: torch.Tensor) -> torch.Tensor:
        x = default if x is None else x
        return torch.as_tensor(x, dtype=logps.dtype, device=logps.device).clamp(min=1.0)

    num_items = as_tensor(num_items_in_batch, mask.sum())
    normalisers = Normalisers(
        rows=logps.shape[0] if micro_batch_rows is None else micro_batch_rows,
        tokens=as_tensor(micro_batch_tokens, mask.sum()),
        num_items=num_items / num_processes * gradient_accumulation_steps / steps_per_generation,
    )
    policy_loss = LOSS_REDUCERS[config.loss_type](per_token, mask, config, normalisers)
    loss = policy_loss
    if config.loss_type not in GLOBAL_TOKEN_LOSS_TYPES:
        loss = loss / gradient_accumulation_steps
    if bonus:
        # The bonus acts on the tokens the policy term trains (TRL's "effective mask"); it is a
        # mean over them per micro-batch, divided only by the accumulation steps (DDP averages ranks).
        bonus_mask = mask if entropy_mask is None else mask * entropy_mask
        if entropy_coef != 0.0:
            if entropy_mask is None:
                tokens = normalisers.tokens
            elif micro_batch_rows is None or micro_batch_rows == logps.shape[0]:
                tokens = bonus_mask.sum().clamp(min=1.0)
            else:
                raise ValueError("an entropy bonus with top_entropy_quantile < 1 is a mean over the micro-batch's "
                                 "high-entropy tokens: call grpo_loss on whole micro-batches")
            loss = loss - entropy_coef * entropy_bonus(entropies, bonus_mask, tokens) / gradient_accumulation_steps
        metrics["policy_loss"] = policy_loss.detach()
        if config.use_adaptive_entropy:
            metrics[ENTROPY_SUM] = (entropies.detach() * bonus_mask).sum()
            metrics[ENTROPY_TOKENS] = bonus_mask.sum()
    if entropies is not None:
        metrics["entropy"] = masked_mean(entropies.detach(), mask)
    return loss, metrics


def truncated_completions(completion_ids: torch.Tensor, eos_token_ids: Iterable[int]) -> torch.Tensor:
    """``[B]`` True for completions that never produced an end-of-sequence token."""
    eos = torch.as_tensor(list(eos_token_ids), device=completion_ids.device)
    return ~torch.isin(completion_ids, eos).any(dim=1)


def mask_truncated_completions(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """Zero the mask rows of truncated completions (``mask_truncated_completions``, DAPO).

    mask ``[B, T]``, truncated ``[B]`` bool; returns a new mask of the same dtype.
    """
    return mask * (~truncated).unsqueeze(1).to(mask.dtype)


# --- the loss from hidden states, chunked over tokens and vocabulary ----------------------------


def chunked_grpo_loss(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    completion_ids: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    config: GRPOConfig,
    *,
    old_logps: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    sampling_logps: torch.Tensor | None = None,
    temperature: float = 1.0,
    num_items_in_batch: torch.Tensor | float | None = None,
    chunk_size: int | None = None,
    impl: str = "auto",
    with_entropy: bool = False,
    vocab_chunk_size: int = 8192,
    fused: bool = True,
    micro_batch_rows: int | None = None,
    micro_batch_tokens: torch.Tensor | float | None = None,
    **grpo_loss_kwargs,
) -> tuple[torch.Tensor, Metrics]:
    """:func:`grpo_loss` straight from the final hidden states, never forming ``[B, T, V]`` logits.

    Two ways, the same loss math (:func:`grpo_loss` itself) in both:

    * ``fused=True`` (the default): :func:`grpo_ray.logprobs.fused_linear_loss`. Per chunk of
      whole rows, the logits are formed once, ``grpo_loss`` runs on that row slice (with the
      micro-batch's normalisers, so the slices' losses sum to the loss) and the gradients to
      ``hidden`` and the head are formed right there: 6NHV executed FLOPs with a trainable
      head, 4NHV frozen. The metrics come from one more ``grpo_loss`` on the whole batch's
      detached logprobs (elementwise work on ``[B, T]``), so they are exactly the plain path's.
    * ``fused=False``, ``impl='full'``, or a loss that needs the whole micro-batch
      (:func:`needs_whole_micro_batch`): :func:`grpo_ray.logprobs.token_logprobs` (its backward
      recomputes each logits chunk: 8NHV), then ``grpo_loss``.

    Args:
        hidden: ``[B, T, H]`` final hidden states at the positions that predict the completion
            tokens (what the LM head would be applied to), one row per completion.
        lm_head_weight: ``[V, H]``; gets a gradient when it requires grad (full fine-tuning),
            none when frozen (LoRA).
        completion_ids: ``[B, T]`` the completion tokens.
        mask, advantages, config, old_logps, ref_logps, sampling_logps, num_items_in_batch,
            micro_batch_rows, micro_batch_tokens: as in :func:`grpo_loss`.
        temperature: the sampling temperature the logits are divided by.
        chunk_size: tokens per chunk; None: 1024 fused (``ModelConfig.fused_loss_chunk_size``:
            whole rows whose full-vocabulary fp32 logits are held, ``C x V x 4`` bytes), 4096
            otherwise (``ModelConfig.logprob_chunk_size``, with ``vocab_chunk_size``).
        impl: 'auto', 'torch', 'triton' or 'full' (``ModelConfig.logprob_impl``).
        with_entropy: also compute per-token entropies and report them as ``metrics['entropy']``
            (otherwise an ``entropies`` keyword, if given, is passed through as in grpo_loss).
            Always on with an entropy bonus, whose gradient flows through them (in the fused
            path, folded into each chunk's gradient).
        vocab_chunk_size: vocabulary entries per chunk.
        fused: the gradient-in-forward path (above).
        **grpo_loss_kwargs: passed on to :func:`grpo_loss` (``gradient_accumulation_steps``,
            ``steps_per_generation``, ``num_processes``).
    """
    from grpo_ray import logprobs as LP  # local: keeps `import grpo_ray.loss` light

    given_entropies = grpo_loss_kwargs.pop("entropies", None)
    with_entropy = with_entropy or entropy_bonus_enabled(config)
    loss_kw = dict(
        num_items_in_batch=num_items_in_batch, micro_batch_rows=micro_batch_rows,
        micro_batch_tokens=micro_batch_tokens, **grpo_loss_kwargs,
    )
    if not fused or impl == "full" or needs_whole_micro_batch(config):
        out = LP.token_logprobs(
            hidden, lm_head_weight, completion_ids, temperature=temperature,
            chunk_size=LP.DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size, impl=impl,
            with_entropy=with_entropy, vocab_chunk_size=vocab_chunk_size,
        )
        logps, entropies = out if with_entropy else (out, given_entropies)
        return grpo_loss(
            logps, old_logps, ref_logps, advantages, mask, config,
            sampling_logps=sampling_logps, entropies=entropies, **loss_kw,
        )

    # Every row slice is normalised as a part of the whole batch (or of the caller's micro-batch):
    # each normaliser that grpo_loss would take from its own inputs is taken from the whole batch.
    tokens = mask.sum()
    slice_kw = dict(
        loss_kw,
        num_items_in_batch=tokens if num_items_in_batch is None else num_items_in_batch,
        micro_batch_rows=hidden.shape[0] if micro_batch_rows is None else micro_batch_rows,
        micro_batch_tokens=tokens if micro_batch_tokens is None else micro_batch_tokens,
    )

    def rows_of(x: torch.Tensor | None, rows: slice) -> torch.Tensor | None:
        return None if x is None else x[rows]

    def slice_loss(rows: slice, logps: torch.Tensor, entropies: torch.Tensor | None) -> torch.Tensor:
        if entropies is None:
            entropies = rows_of(given_entropies, rows)
        loss, _ = grpo_loss(
            logps, rows_of(old_logps, rows), rows_of(ref_logps, rows), advantages[rows], mask[rows], config,
            sampling_logps=rows_of(sampling_logps, rows), entropies=entropies, **slice_kw,
        )
        return loss

    loss, logps, entropies = LP.fused_linear_loss(
        hidden, lm_head_weight, completion_ids, slice_loss, temperature=temperature,
        chunk_size=LP.DEFAULT_FUSED_CHUNK_SIZE if chunk_size is None else chunk_size,
        vocab_chunk_size=vocab_chunk_size, impl=impl, with_entropy=with_entropy,
    )
    with torch.no_grad():
        _, metrics = grpo_loss(
            logps, old_logps, ref_logps, advantages, mask, config, sampling_logps=sampling_logps,
            entropies=entropies if with_entropy else given_entropies, **loss_kw,
        )
    return loss, metrics
