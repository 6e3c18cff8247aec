"""Task pairs that run together: n pairs of one token length on a given model.

A task's pairs differ in token length (names and cities tokenise differently), and one
PromptSet without role positions needs one length. `runnable_pairs` draws the task's pairs in
their deterministic order and keeps the first `n` that share a length (clean and corrupt alike)
and have single-token answers, drawing more until it has them.

>>> from patching import load_model
>>> model = load_model("default")
>>> pairs = runnable_pairs(model, "ioi", 8)
>>> len(pairs), len({len(model.encode(p.clean)) for p in pairs})
(8, 1)
"""
from __future__ import annotations

from patching.core.prompts import PromptSet
from patching.tasks.families import TaskPair, make_pairs

MAX_DRAWS = 4096          # candidates drawn at most before giving up on n pairs of one length


def usable_length(model, pair: TaskPair, prepend_bos: bool = True) -> int | None:
    """The pair's token length when it can run (equal clean / corrupt lengths, single-token
    answers), else None.

    >>> from patching import load_model
    >>> usable_length(load_model("default"), make_pairs("ioi", 1)[0]) is not None
    True
    """
    try:
        return PromptSet.from_pairs(model, [pair], prepend_bos=prepend_bos).n_pos
    except ValueError:
        return None


def runnable_pairs(model, task: str, n: int, *, seed: int = 0, split: str = "eval",
                   prepend_bos: bool = True, max_draws: int = MAX_DRAWS) -> list[TaskPair]:
    """The first `n` pairs of `task` (in draw order) that share one token length on `model`.

    Deterministic for (model's tokenizer, task, n, seed, split); ValueError naming how many pairs
    of one length exist among `max_draws` draws when there are fewer than `n`.
    """
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= max_draws:
        raise ValueError(f"number of pairs must be a whole number from 1 to {max_draws}, not {n!r}")
    groups: dict[int, list[TaskPair]] = {}
    drawn, size = 0, max(4 * n, 32)
    while drawn < max_draws:
        size = min(size, max_draws)
        for pair in make_pairs(task, size, split=split, seed=seed)[drawn:]:   # draws are prefix-stable
            length = usable_length(model, pair, prepend_bos)
            if length is None:
                continue
            group = groups.setdefault(length, [])
            group.append(pair)
            if len(group) == n:
                return group
        drawn, size = size, size * 4
    best = max((len(g) for g in groups.values()), default=0)
    raise ValueError(f"only {best} {task!r} pairs of one token length among {drawn} drawn on model "
                     f"{getattr(model, 'name', '')!r}; ask for at most {best} pairs")
