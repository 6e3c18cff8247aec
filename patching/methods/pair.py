"""The cached pair: a prompt set's clean and corrupt runs, seen from one direction, with a metric.

Every method starts here: the two runs (`Runner.run` each, once), which of them is patched
(`base`: the corrupt run when denoising, the clean run when noising) and which gives the
activations (`donor`), the clean run's log-probabilities, the metric inputs of any rows, and the
baselines.

>>> pair = CachedPair.run(model, prompts, "logit_diff", "denoise")      # doctest: +SKIP
>>> pair.base is pair.corrupt, pair.clean_baseline.shape               # doctest: +SKIP
(True, torch.Size([n_pairs]))
>>> pair.measure(model.runner.resume(pair.base, rows, 3, "pre", x))    # [rows] float64  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from metrics import Metric, MetricInputs, get_metric

from patching.core.prompts import PromptSet
from patching.core.spec import check_direction
from patching.model.runner import RunCache


@dataclass(frozen=True, eq=False)
class CachedPair:
    """clean / corrupt: the two runs ([pairs, ...] each; a run without a runner may carry only
    its last-position logits, `layers=[]`); direction names which one is patched."""
    prompts: PromptSet
    clean: RunCache
    corrupt: RunCache
    metric: Metric | None              # None: a view that measures nothing (attention patterns)
    direction: str = "denoise"
    clean_logprobs: Float[Tensor, "pairs vocab"] = field(init=False, repr=False)

    def __post_init__(self):
        check_direction(self.direction)
        self.prompts.require_one_length("this method (its clean and corrupt runs are one batch)")
        if self.metric is not None:
            object.__setattr__(self, "metric", get_metric(self.metric))
        object.__setattr__(self, "clean_logprobs", self.clean.logits.float().log_softmax(-1))

    @classmethod
    def run(cls, model, prompts: PromptSet, metric: Metric | Callable | str | None,
            direction: str = "denoise") -> "CachedPair":
        """Both runs of `prompts` through the model's runner (under inference mode).

        >>> CachedPair.run(model, prompts, "kl", "noise").base is not None      # doctest: +SKIP
        True
        """
        check_direction(direction)
        runner = model.runner if hasattr(model, "runner") else model
        return cls(prompts, runner.run(prompts.clean_tokens), runner.run(prompts.corrupt_tokens),
                   get_metric(metric) if metric is not None else None, direction)

    @classmethod
    def from_base(cls, prompts: PromptSet, base: RunCache, donor: RunCache, metric: Metric | Callable | str,
                  direction: str = "denoise") -> "CachedPair":
        """The pair from its base and donor runs (e.g. a base run taken with gradients).

        >>> CachedPair.from_base(prompts, base, donor, "logit_diff", "noise").clean is base   # doctest: +SKIP
        True
        """
        clean, corrupt = (donor, base) if check_direction(direction) == "denoise" else (base, donor)
        return cls(prompts, clean, corrupt, get_metric(metric), direction)

    @classmethod
    def from_logits(cls, prompts: PromptSet, clean_logits: Float[Tensor, "pairs vocab"],
                    corrupt_logits: Float[Tensor, "pairs vocab"], metric: Metric | Callable | str,
                    direction: str = "denoise") -> "CachedPair":
        """A pair known only by its last-position logits (models without a runner).

        >>> CachedPair.from_logits(prompts, clean[:, -1], corrupt[:, -1], "logit_diff")  # doctest: +SKIP
        """
        return cls(prompts, RunCache(prompts.clean_tokens, [], clean_logits),
                   RunCache(prompts.corrupt_tokens, [], corrupt_logits), get_metric(metric), direction)

    # -- which run is which --------------------------------------------------------------------
    @property
    def base(self) -> RunCache:
        """The run being patched: corrupt when denoising, clean when noising."""
        return self.corrupt if self.direction == "denoise" else self.clean

    @property
    def donor(self) -> RunCache:
        """The run whose activations are patched in."""
        return self.clean if self.direction == "denoise" else self.corrupt

    @property
    def n_pairs(self) -> int:
        return self.prompts.n_pairs

    @cached_property
    def pairs(self) -> Int[Tensor, "pairs"]:
        """0..n_pairs-1 on the prompts' device (the rows of an unpatched batch)."""
        return torch.arange(self.n_pairs, device=self.prompts.clean_tokens.device)

    # -- measuring -----------------------------------------------------------------------------
    def inputs(self, rows: Int[Tensor, "batch"] | None = None) -> MetricInputs:
        """The metric inputs of rows [batch] (each row's pair; None = every pair once).

        >>> pair.inputs(pair.pairs.repeat(3)).answer.shape      # [3 * n_pairs]   # doctest: +SKIP
        """
        return MetricInputs.of(self.prompts, self.clean_logprobs, rows)

    def score(self, logits: Float[Tensor, "batch vocab"], rows: Int[Tensor, "batch"] | None = None
              ) -> Float[Tensor, "batch"]:
        """The metric of last-position logits, as computed (keeps autograd; attribution).

        >>> pair.score(acts.logits, rows).sum().backward()                       # doctest: +SKIP
        """
        if self.metric is None:
            raise ValueError("this cached pair was built without a metric; pass one to measure")
        return self.metric(logits.float(), self.inputs(rows))

    def measure(self, logits: Float[Tensor, "batch vocab"], rows: Int[Tensor, "batch"] | None = None
                ) -> Float[Tensor, "batch"]:
        """The metric of last-position logits, float64 on the CPU (what results store).

        >>> pair.measure(pair.clean.logits).dtype                                # doctest: +SKIP
        torch.float64
        """
        return self.score(logits, rows).double().cpu()

    @cached_property
    def clean_baseline(self) -> Float[Tensor, "pairs"]:
        return self.measure(self.clean.logits)

    @cached_property
    def corrupt_baseline(self) -> Float[Tensor, "pairs"]:
        return self.measure(self.corrupt.logits)

    @property
    def base_baseline(self) -> Float[Tensor, "pairs"]:
        """The unpatched value: the base run's metric."""
        return self.corrupt_baseline if self.direction == "denoise" else self.clean_baseline
