"""Task pairs that run together on a given model, with their role positions.

A task's pairs differ in token length (names and cities tokenise differently). `runnable_pairs`
draws the task's pairs in their deterministic order and keeps the first `n` that share a length
(clean and corrupt alike) and have single-token answers, drawing more until it has them.
`aligned_pairs` keeps the first `n` usable pairs of any length: each carries its role positions
(`token_roles`: the family's IO / S1 / S1+1 / S2 / END ... as token indices on this tokenizer),
so the set runs aligned by role. Both fill every pair's `positions`.

>>> from patching import load_model
>>> model = load_model("default")
>>> pairs = runnable_pairs(model, "ioi", 8)
>>> len(pairs), len({len(model.encode(p.clean)) for p in pairs})
(8, 1)
"""
from __future__ import annotations

from patching.core.prompts import PromptPair, PromptSet, Roles
from patching.tasks.families import TaskPair, make_pairs

MAX_DRAWS = 4096          # candidates drawn at most before giving up on n pairs of one length


def token_roles(model, pair: TaskPair, prepend_bos: bool = True) -> Roles:
    """The pair's role positions as token indices (BOS included when prepended) on `model`'s
    tokenizer: each role's token is the last token of the clean prompt's text up to the role's
    word, moved by its offset. () when the family names no roles, or when a prefix tokenises
    differently from the whole prompt (no token boundary there).

    >>> from patching import load_model
    >>> token_roles(load_model("default"), make_pairs("ioi", 1)[0])
    (('IO', 4), ('S1', 2), ('S1+1', 3), ('S2', 11), ('END', 15))
    """
    bos = 1 if prepend_bos and model.bos_token_id is not None else 0
    whole = model.encode(pair.clean)
    out = []
    for name, end, offset in pair.spans:
        prefix = model.encode(pair.clean[:end])
        index = len(prefix) - 1 + offset
        if whole[:len(prefix)] != prefix or not 0 <= index < len(whole):
            return ()
        out.append((name, bos + index))
    return tuple(out)


def with_roles(model, pair: TaskPair, prepend_bos: bool = True) -> PromptPair:
    """The pair as a PromptPair with its role positions on `model` (none when they do not map).

    >>> from patching import load_model
    >>> with_roles(load_model("default"), make_pairs("factual", 1)[0]).positions[-1][0]
    'END'
    """
    return PromptPair(pair.clean, pair.corrupt, pair.answer, pair.wrong, token_roles(model, pair, prepend_bos))


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


def _check_n(n, max_draws: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= max_draws:
        raise ValueError(f"number of pairs must be a whole number from 1 to {max_draws}, not {n!r}")


def aligned_pairs(model, task: str, n: int, *, seed: int = 0, split: str = "eval",
                  prepend_bos: bool = True, max_draws: int = MAX_DRAWS) -> list[PromptPair]:
    """The first `n` usable pairs of `task` (in draw order), of any token length, each with its
    role positions on `model`: a set of mixed lengths that runs aligned by role.

    >>> from patching import load_model
    >>> model = load_model("default")
    >>> ps = PromptSet.from_pairs(model, aligned_pairs(model, "ioi", 16))
    >>> ps.role_names, len(set(ps.lengths)) > 1
    (('IO', 'S1', 'S1+1', 'S2', 'END'), True)
    """
    _check_n(n, max_draws)
    out: list[PromptPair] = []
    drawn, size = 0, max(2 * n, 32)
    while drawn < max_draws:
        size = min(size, max_draws)
        for pair in make_pairs(task, size, split=split, seed=seed)[drawn:]:   # draws are prefix-stable
            roled = with_roles(model, pair, prepend_bos)
            if roled.positions and usable_length(model, roled, prepend_bos) is not None:
                out.append(roled)
                if len(out) == n:
                    return out
        drawn, size = size, size * 4
    raise ValueError(f"only {len(out)} usable {task!r} pairs with role positions among {drawn} drawn on "
                     f"model {getattr(model, 'name', '')!r}; ask for at most {len(out)} pairs")


def runnable_pairs(model, task: str, n: int, *, seed: int = 0, split: str = "eval",
                   prepend_bos: bool = True, max_draws: int = MAX_DRAWS) -> list[PromptPair]:
    """The first `n` pairs of `task` (in draw order) that share one token length on `model`,
    with their role positions.

    Deterministic for (model's tokenizer, task, n, seed, split); ValueError naming how many pairs
    of one length exist among `max_draws` draws when there are fewer than `n`.
    """
    _check_n(n, max_draws)
    groups: dict[int, list[PromptPair]] = {}
    drawn, size = 0, max(4 * n, 32)
    while drawn < max_draws:
        size = min(size, max_draws)
        for pair in make_pairs(task, size, split=split, seed=seed)[drawn:]:   # draws are prefix-stable
            pair = with_roles(model, pair, prepend_bos)
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
