"""The entropy bonus's coefficient across optimizer steps: static, or adaptive (Skywork-OR1).

Pure (no Ray, no model): the learner owns one :class:`EntropyControl`, passes
:attr:`EntropyControl.applied_coef` to every :func:`grpo_ray.loss.grpo_loss` call of an
accumulation window, hands it each call's metrics (:meth:`EntropyControl.observe`) and calls
:meth:`EntropyControl.step` once per optimizer step; its state goes into the learner's checkpoint.

Adaptive entropy control (the Skywork-OR1 report, arXiv:2505.22312), exactly as TRL 1.16's
``GRPOTrainer`` runs it (``use_adaptive_entropy``): with H_w the mean entropy of one accumulation
window, over the bonus's tokens of every micro-step on every learner process (summed entropies
over summed token counts, so ranks with longer completions weigh more), after each optimizer step

    c <- min(c + delta, c_max)   if H_w <= entropy_target
    c <- max(c - delta, c_min)   otherwise

and the next window's bonus applies c only if that H_w <= entropy_target (0 otherwise). Before
the first measurement H_w counts as +inf: no bonus in the first window. Without adaptive control
the coefficient is ``entropy_coef`` throughout.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from grpo_ray.config import GRPOConfig
from grpo_ray.loss import ENTROPY_SUM, ENTROPY_TOKENS, entropy_bonus_enabled

#: Sums a dict of floats over the learner processes (or averages it: only ratios are taken).
Reduce = Callable[[dict[str, float]], dict[str, float]]


class EntropyControl:
    """The coefficient the entropy bonus applies, and (adaptive) its controller's state: the
    coefficient, the last window's entropy and the current window's running totals."""

    def __init__(self, config: GRPOConfig):
        self.config = config
        self.coef = float(config.entropy_coef)
        self.last_entropy = math.inf  # H_w of the last optimizer step; +inf before any
        self._sum: torch.Tensor | float = 0.0  # this window's entropy over the bonus tokens, and their count
        self._tokens: torch.Tensor | float = 0.0

    @property
    def applied_coef(self) -> float:
        """The coefficient of this accumulation window's bonus (``grpo_loss``'s ``entropy_coef``)."""
        if self.config.use_adaptive_entropy and not self.last_entropy <= self.config.entropy_target:
            return 0.0
        return self.coef

    def observe(self, metrics: dict[str, torch.Tensor]) -> None:
        """Take one ``grpo_loss`` call's window statistics out of its ``metrics`` (in place, so
        they are not logged) and add them to the window's totals (left on their device)."""
        total, tokens = metrics.pop(ENTROPY_SUM, None), metrics.pop(ENTROPY_TOKENS, None)
        if total is not None:
            self._sum = self._sum + total.detach().double()
            self._tokens = self._tokens + tokens.detach().double()

    def step(self, reduce: Reduce | None = None) -> dict[str, float]:
        """At an optimizer step: (adaptive) reduce the window's totals over the learner
        processes with ``reduce`` (a sum or a mean over ranks; None = one process), update the
        coefficient and start a new window. Returns the metric to log (``entropy_coef``, the
        coefficient after the update, as TRL logs it), or ``{}`` without a bonus."""
        if not entropy_bonus_enabled(self.config):
            return {}
        c = self.config
        if c.use_adaptive_entropy:
            totals = {"sum": float(self._sum), "tokens": float(self._tokens)}
            if reduce is not None:
                totals = reduce(totals)
            # Scale-free (a mean over ranks gives the same ratio); no tokens: 0, as TRL's clamp gives.
            entropy = totals["sum"] / totals["tokens"] if totals["tokens"] > 0 else 0.0
            if entropy <= c.entropy_target:
                self.coef = min(self.coef + c.entropy_coef_delta, c.entropy_coef_max)
            else:
                self.coef = max(self.coef - c.entropy_coef_delta, c.entropy_coef_min)
            self.last_entropy = entropy
            self._sum = self._tokens = 0.0
        return {"entropy_coef": self.coef}

    def state_dict(self) -> dict[str, float | bool]:
        """What an exact resume needs, as floats (the window's totals too: a checkpoint may fall
        inside an accumulation window)."""
        return {
            "adaptive": self.config.use_adaptive_entropy, "coef": self.coef, "last_entropy": self.last_entropy,
            "window_sum": float(self._sum), "window_tokens": float(self._tokens),
        }

    def load_state_dict(self, state: dict[str, float | bool]) -> None:
        """Restore a saved controller. As in TRL, only an adaptive run resumes one saved by an
        adaptive run; otherwise the config's ``entropy_coef`` stands (a static coefficient, or
        the initial one of adaptive control switched on at the resume)."""
        if not (self.config.use_adaptive_entropy and state["adaptive"]):
            return
        self.coef, self.last_entropy = float(state["coef"]), float(state["last_entropy"])
        self._sum, self._tokens = float(state["window_sum"]), float(state["window_tokens"])
