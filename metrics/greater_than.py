"""greater_than_prob_diff: Hanna et al. 2023's probability difference for the greater-than task.

For "The war lasted from the year 1732 to the year 17", the mass the last position's next-token
distribution puts on the two-digit years greater than the start year (33..99) minus the mass on
the years up to it (00..32); the softmax is over the whole vocabulary. Both runs of a pair are
measured against the clean prompt's start year (the corrupt prompt's "01" start is the
baseline), so 1 means "all mass above the start", -1 "all mass at or below it". Higher is more
like clean. The years are the tokens "00".."99" (no leading space: they follow " 17").
"""
from __future__ import annotations

import re

import torch
from jaxtyping import Float, Int
from torch import Tensor

from metrics.base import Metric, MetricInputs

YEARS = tuple(f"{y:02d}" for y in range(100))


def greater_than_start(prompt: str) -> int:
    """The two-digit start year of a greater-than prompt (the ``YY`` of its last ``XXYY``).

    >>> greater_than_start("The war lasted from the year 1732 to the year 17")
    32
    """
    years = re.findall(r"\b\d{4}\b", prompt)
    if not years:
        raise ValueError(f"no four-digit start year in greater-than prompt {prompt!r}; the "
                         "greater-than metric reads prompts like 'The war lasted from the year 1732 "
                         "to the year 17'")
    return int(years[-1][2:])


def year_sets(prompts) -> dict[str, Int[Tensor, "pairs 100"]]:
    """Each pair's years above its clean prompt's start (answer_set) and at or below it
    (wrong_set), as token ids padded with -1; `prompts` must carry its tokenizer (`encode`).

    >>> from types import SimpleNamespace as P
    >>> sets = year_sets(P(pairs=[P(clean="from 1797 to 17")], encode=lambda t: [int(t)],
    ...                    clean_tokens=torch.zeros(1, 1)))
    >>> sets["answer_set"][0, 98:].tolist(), int((sets["wrong_set"][0] >= 0).sum())
    ([98, 99], 98)
    """
    encode = getattr(prompts, "encode", None)
    if encode is None:
        raise ValueError("greater_than_prob_diff needs the prompt set's tokenizer; build the set "
                         "with PromptSet.from_pairs")
    ids = []
    for year in YEARS:
        tokens = encode(year)
        if len(tokens) != 1:
            raise ValueError(f"greater_than_prob_diff needs each year '00'..'99' to be one token; "
                             f"this model splits {year!r} into {len(tokens)}")
        ids.append(tokens[0])
    year_ids = torch.tensor(ids, device=prompts.clean_tokens.device)                   # [100]
    starts = torch.tensor([greater_than_start(p.clean) for p in prompts.pairs],
                          device=year_ids.device)                                      # [pairs]
    above = torch.arange(100, device=year_ids.device)[None, :] > starts[:, None]       # [pairs, 100]
    none = torch.full_like(above, -1, dtype=year_ids.dtype)
    return {"answer_set": torch.where(above, year_ids, none), "wrong_set": torch.where(above, none, year_ids)}


def _mass(probs: Float[Tensor, "batch vocab"], ids: Int[Tensor, "batch S"]) -> Float[Tensor, "batch"]:
    return (probs.gather(1, ids.clamp(min=0)) * (ids >= 0)).sum(-1)


def set_prob_diff(logits: Float[Tensor, "batch vocab"], inputs: MetricInputs) -> Float[Tensor, "batch"]:
    """p(answer_set) - p(wrong_set) under the softmax of the last position.

    >>> x = torch.tensor([[0., 0., 0., 0.]])
    >>> set_prob_diff(x, MetricInputs(None, None, None, torch.tensor([[0, 1, 2]]), torch.tensor([[3, -1, -1]])))
    tensor([0.5000])
    """
    probs = logits.softmax(-1)
    return _mass(probs, inputs.answer_set) - _mass(probs, inputs.wrong_set)


METRIC = Metric("greater_than_prob_diff", set_prob_diff, "p(years > start) - p(years <= start)", "higher",
                prepare=year_sets)
