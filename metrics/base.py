"""The Metric protocol: a function of the last position's logits, one value per row.

A metric may read more than the answer and wrong tokens: its row's `prepare` turns the prompt
set into per-pair tensors (greater-than's year sets, a multi-token answer's token ids), built
once per set and sliced by rows into `MetricInputs`; a metric with `continuation=True` reads
the logits at the answer / wrong continuation positions too ([batch, readout, vocab], see
`metrics.sequence`), which only exact sweeps compute.

>>> import torch
>>> from metrics import METRICS
>>> m = METRICS["logit_diff"]
>>> m(torch.tensor([[0., 2., 1.]]), MetricInputs(torch.tensor([1]), torch.tensor([2]), None))   # -> [batch]
tensor([1.])
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

import torch  # noqa: F401  (the doctests)
from jaxtyping import Float, Int
from torch import Tensor


@dataclass(frozen=True)
class MetricInputs:
    """What a metric may read besides the logits; every tensor has one entry per row."""
    answer: Int[Tensor, "batch"]                 # the clean answer token
    wrong: Int[Tensor, "batch"]                  # the corrupt (wrong) answer token
    clean_logprobs: Float[Tensor, "batch vocab"]  # the clean run's next-token log-probabilities
    # what a metric's `prepare` adds (None unless it does); token ids padded with -1:
    answer_set: Int[Tensor, "batch S"] | None = None    # tokens whose mass counts for the answer
    wrong_set: Int[Tensor, "batch S"] | None = None     # tokens whose mass counts against it
    answer_seq: Int[Tensor, "batch La"] | None = None   # a multi-token answer, token by token
    wrong_seq: Int[Tensor, "batch Lw"] | None = None    # a multi-token wrong continuation

    @classmethod
    def of(cls, prompts, clean_logprobs: Float[Tensor, "pairs vocab"] | None,
           rows: Int[Tensor, "batch"] | None = None,
           data: Mapping[str, Tensor] | None = None) -> "MetricInputs":
        """The inputs of rows of a prompt set (anything with `answer_ids` and `wrong_ids`
        [pairs]) and of a metric's prepared per-pair `data` (field name -> [pairs, ...]); rows
        [batch] picks each row's pair, None = every pair once. The one place metric inputs are built.

        >>> from types import SimpleNamespace as P
        >>> MetricInputs.of(P(answer_ids=torch.tensor([5, 6]), wrong_ids=torch.tensor([7, 8])), None,
        ...                 torch.tensor([1, 1])).answer
        tensor([6, 6])
        """
        pick = (lambda t: t) if rows is None else (lambda t: t[rows] if t is not None else None)
        extra = {name: pick(t) for name, t in (data or {}).items()}
        return cls(pick(prompts.answer_ids), pick(prompts.wrong_ids), pick(clean_logprobs), **extra)


class MetricFn(Protocol):
    def __call__(self, logits: Float[Tensor, "batch vocab"], inputs: MetricInputs) -> Float[Tensor, "batch"]: ...


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[Tensor, MetricInputs], Tensor]
    formula: str
    clean_is: str        # which way is "more like clean": "higher" or "lower"
    # the prompt set -> per-pair tensors named as MetricInputs fields (built once per set)
    prepare: Callable[..., dict[str, Tensor]] | None = None
    continuation: bool = False   # reads the answer / wrong continuation positions' logits too

    def __post_init__(self):
        if self.clean_is not in ("higher", "lower"):
            raise ValueError(f"clean_is must be 'higher' or 'lower', not {self.clean_is!r}")

    def __call__(self, logits: Tensor, inputs: MetricInputs) -> Tensor:
        if not self.formula.startswith("user function"):
            out = self.fn(logits, inputs)
        else:                      # a user's function failing is bad input: say which and why
            try:
                out = self.fn(logits, inputs)
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"metric {self.name!r} raised {type(exc).__name__}: {exc}") from None
        if not isinstance(out, Tensor):
            raise ValueError(f"metric {self.name!r} must return a tensor of shape [{logits.shape[0]}], "
                             f"got {type(out).__name__}")
        if out.shape != logits.shape[:1]:     # [batch] whatever the logits' shape
            raise ValueError(f"metric {self.name!r} must return one value per row, shape "
                             f"[{logits.shape[0]}], got {tuple(out.shape)}")
        return out


def load_user_metric(ref: str) -> Metric:
    """'package.module:function' -> Metric; the function takes (logits [batch, vocab], MetricInputs).

    >>> load_user_metric("metrics.logit_diff:logit_diff").name
    'metrics.logit_diff:logit_diff'
    """
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ValueError(f"custom metric {ref!r} must look like 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load metric {ref!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the module itself fails on import
        raise ValueError(f"cannot load metric {ref!r}: importing {module_name!r} raised "
                         f"{type(exc).__name__}: {exc}") from None
    if not callable(fn):
        raise ValueError(f"metric {ref!r} is not callable")
    return Metric(ref, fn, f"user function {ref}", "higher")
