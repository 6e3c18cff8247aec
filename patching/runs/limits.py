"""Bounds on every field of an imported run (`bundle.read_bundle`: `show`, `import`, the page's
upload), and the short text a page shows for a stored one (`clip`).

A run file is checked field by field before anything is stored: nesting depth, every string's
length (by where it sits: label, prompt, token, metric code, any other field), every list's
length, the number of results, pairs and cells. A refusal is a ValueError naming the field and
the bound, so a file with a 500 kB label never reaches the history that every visitor renders.

>>> check_document({"label": "x" * 300})
Traceback (most recent call last):
...
ValueError: run.json: label is 300 characters; the limit is 200
"""
from __future__ import annotations

import re

MAX_LABEL_CHARS = 200          # a run's label
MAX_PROMPT_CHARS = 20_000      # a clean / corrupt prompt (far beyond any model's context)
MAX_ANSWER_CHARS = 200         # an answer / wrong token
MAX_TOKEN_CHARS = 200          # one of a result's str_tokens
MAX_CODE_CHARS = 64_000        # a user metric's source kept in the provenance
MAX_TEXT_CHARS = 1_000         # any other string (spec fields, model names, versions, keys)
MAX_PAIRS = 10_000             # pairs in a run (as `patching.core.prompts.MAX_PAIRS`)
MAX_TOKENS = MAX_PROMPT_CHARS  # str_tokens of a result (a token is at least a character)
MAX_ITEMS = 10_000             # any other list, and keys of any object
MAX_RESULTS = 64               # results (kinds) in one run file
MAX_CELLS = 20_000_000         # values in one result (cells x pairs), checked before reading them
MAX_AXES = 4                   # a result's axes (layer, head, pos, neuron)
MAX_DEPTH = 12                 # nesting of objects and lists anywhere in run.json
NUMERIC = ("per_pair", "clean_baseline", "corrupt_baseline")   # numbers only: bounded by MAX_CELLS

_TEXT_LIMITS = (                # (pattern over the field's path with indices as [], limit)
    (re.compile(r"^label$"), MAX_LABEL_CHARS),
    (re.compile(r"^(results\[\]\.provenance\.)?pairs\[\]\[\]$"), MAX_PROMPT_CHARS),
    (re.compile(r"^results\[\]\.str_tokens\[\]$"), MAX_TOKEN_CHARS),
    (re.compile(r"^results\[\]\.provenance\.metric\.code$"), MAX_CODE_CHARS),
)
_LIST_LIMITS = (
    (re.compile(r"^(results\[\]\.provenance\.)?pairs$"), MAX_PAIRS),
    (re.compile(r"^results$"), MAX_RESULTS),
    (re.compile(r"^results\[\]\.str_tokens$"), MAX_TOKENS),
    (re.compile(r"^results\[\]\.(axes|shape)$"), MAX_AXES + 1),
    (re.compile(r"^results\[\]\.coords\.[^.]+$"), MAX_CELLS),     # all neurons of a large model: > 10,000
)


def _limit(path: str, table, default: int) -> int:
    generic = re.sub(r"\[\d+\]", "[]", path)
    return next((n for pattern, n in table if pattern.match(generic)), default)


def _shown(path: str) -> str:
    return path if len(path) <= 80 else path[:80] + "…"


def _is_numeric_path(path: str) -> bool:
    return bool(re.match(r"^results\[\d+\]\.(" + "|".join(NUMERIC) + r")(\[|$)", path))


def check_document(doc: object, root: str = "run.json") -> None:
    """Walk run.json (iteratively) and bound depth, string lengths and list lengths.

    >>> check_document({"pairs": [["a", "b", " c", " d"]], "label": "ok"})
    """
    stack: list[tuple[object, str, int]] = [(doc, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"{root}: {_shown(path)} is nested {depth} deep; the limit is {MAX_DEPTH}")
        if isinstance(value, str):
            limit = _limit(path, _TEXT_LIMITS, MAX_TEXT_CHARS)
            if len(value) > limit:
                raise ValueError(f"{root}: {_shown(path)} is {len(value)} characters; the limit is {limit}")
        elif isinstance(value, list):
            limit = None if _is_numeric_path(path) else _limit(path, _LIST_LIMITS, MAX_ITEMS)
            if limit is not None and len(value) > limit:
                raise ValueError(f"{root}: {_shown(path)} has {len(value)} items; the limit is {limit}")
            if limit is None and value and not isinstance(value[0], list):
                continue                           # a row of numbers: checked against the shape
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value))
        elif isinstance(value, dict):
            if len(value) > MAX_ITEMS:
                raise ValueError(f"{root}: {_shown(path) or 'the document'} has {len(value)} keys; "
                                 f"the limit is {MAX_ITEMS}")
            for k, v in value.items():
                if len(k) > MAX_TEXT_CHARS:
                    raise ValueError(f"{root}: a key of {_shown(path) or 'the document'} is {len(k)} "
                                     f"characters; the limit is {MAX_TEXT_CHARS}")
                stack.append((v, f"{path}.{k}" if path else k, depth + 1))


def check_pairs(pairs: list, where: str = "run.json: pairs") -> None:
    """Answer and wrong are single tokens: a short string each (prompts are bounded by the walk).

    >>> check_pairs([["a b", "a c", " b" * 200, " c"]])
    Traceback (most recent call last):
    ...
    ValueError: run.json: pairs[0] answer is 400 characters; the limit is 200
    """
    for n, p in enumerate(pairs):
        for name, s in zip(("answer", "wrong"), p[2:4]):
            if isinstance(s, str) and len(s) > MAX_ANSWER_CHARS:
                raise ValueError(f"{where}[{n}] {name} is {len(s)} characters; the limit is {MAX_ANSWER_CHARS}")


def check_cells(shape: list, where: str) -> int:
    """The number of values `shape` holds, refused above MAX_CELLS before any is read.

    >>> check_cells([12, 12, 20, 4], "result 0")
    11520
    """
    n = 1
    for size in shape:
        n *= size
        if n > MAX_CELLS:
            raise ValueError(f"{where}: shape {shape[:MAX_AXES + 1]} holds more than {MAX_CELLS} values; "
                             f"the limit is {MAX_CELLS}")
    return n


def clip(text: object, limit: int = 120) -> str:
    """A stored string as a page shows it: at most `limit` characters, with an ellipsis when cut.

    >>> clip("a" * 10, 4)
    'aaa…'
    """
    s = text if isinstance(text, str) else str(text)
    return s if len(s) <= limit else s[:max(limit - 1, 0)] + "…"
