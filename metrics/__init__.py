"""Pluggable metrics: a registry by name, or any `package.module:function`.

| name | formula | more like clean |
|---|---|---|
| logit_diff (default) | logit(answer) - logit(wrong) | higher |
| prob_diff | p(answer) - p(wrong) | higher |
| logprob | log p(answer) | higher |
| accuracy | 1 if argmax = answer | higher |
| kl | KL(p_clean || p_patched) | lower (0 = clean) |
| greater_than_prob_diff | p(years > start) - p(years <= start), start = the clean prompt's year | higher |
| seq_logprob_diff | sum log p(answer tokens) - sum log p(wrong tokens), teacher-forced | higher |

Only seq_logprob_diff takes answers of several tokens (`takes_multi_token`).

>>> get_metric("logit_diff").formula
'logit(answer) - logit(wrong)'
"""
from __future__ import annotations

from typing import Callable

from metrics import greater_than as _gt
from metrics import kl as _kl
from metrics import logit_diff as _ld
from metrics import probability as _p
from metrics import sequence as _seq
from metrics.base import Metric, MetricInputs, load_user_metric

METRICS: dict[str, Metric] = {m.name: m for m in (
    _ld.METRIC, _p.PROB_DIFF, _p.LOGPROB, _p.ACCURACY, _kl.METRIC, _gt.METRIC, _seq.METRIC)}
MULTI_TOKEN_METRICS = tuple(name for name, m in METRICS.items() if m.continuation)


def get_metric(metric: str | Metric | Callable) -> Metric:
    """A registered name, 'package.module:function', a Metric, or a plain callable."""
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        return Metric(getattr(metric, "__name__", "custom"), metric, "user function", "higher")
    if metric in METRICS:
        return METRICS[metric]
    if ":" in str(metric):
        return load_user_metric(metric)
    raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)} "
                     "or give 'package.module:function'")


def takes_multi_token(metric: str | Metric | Callable | None) -> bool:
    """Whether the metric takes answers of several tokens (it reads their continuation).

    >>> takes_multi_token("seq_logprob_diff"), takes_multi_token("logit_diff"), takes_multi_token(None)
    (True, False, False)
    """
    return metric is not None and get_metric(metric).continuation


__all__ = ["METRICS", "MULTI_TOKEN_METRICS", "Metric", "MetricInputs", "get_metric", "load_user_metric",
           "takes_multi_token"]
