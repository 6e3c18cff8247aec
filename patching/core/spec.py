"""PatchSpec: what to patch, as a frozen value that checks itself and round-trips through JSON.

>>> spec = PatchSpec(kind="head_out", per_position=True, layers=(0, 1))
>>> PatchSpec.from_dict(spec.to_dict()) == spec
True
"""
from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, fields

DIRECTIONS = ("denoise", "noise")


def check_direction(direction: str) -> str:
    """The direction, or a ValueError naming it and the accepted ones (the one direction check).

    >>> check_direction("noise")
    'noise'
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'denoise' or 'noise', not {direction!r}")
    return direction


def check_whole(value, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """value as an int (bools refused), within [lo, hi] when given; else a ValueError naming it
    and the accepted range (the one whole-number check).

    >>> check_whole(3, "k", 1)
    3
    >>> check_whole(0, "steps", 1, 1024)
    Traceback (most recent call last):
    ...
    ValueError: steps must be a whole number from 1 to 1024, not 0
    """
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or (lo is not None and number < lo) or (hi is not None and number > hi):
        span = (f" from {lo} to {hi}" if lo is not None and hi is not None
                else f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else "")
        raise ValueError(f"{what} must be a whole number{span}, not {value!r}")
    return number


def check_index(value, size: int, what: str, context: str) -> int:
    """An index into an axis of `size`; negative counts from the end (-1 = last). ValueError
    naming the value, the axis and its range (the inspection views' index check).

    >>> check_index(-1, 4, "layer", "the model has 4 layers")
    3
    >>> check_index(5, 2, "layer", "the model has 2 layers")
    Traceback (most recent call last):
    ...
    ValueError: layer 5 is out of range: the model has 2 layers (0..1, or -1 for the last)
    """
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, not {value!r}") from None
    if not -size <= number < size:
        raise ValueError(f"{what} {value} is out of range: {context} (0..{size - 1}, or -1 for the last)")
    return number % size


def _ints(values, what: str) -> tuple[int, ...] | None:
    if values is None:
        return None
    out = tuple(int(v) for v in values)
    if not out:
        raise ValueError(f"{what} is empty; leave it out to use all {what}")
    if any(v < 0 for v in out):
        raise ValueError(f"{what} must be >= 0, got {list(out)}")
    return tuple(sorted(set(out)))


@dataclass(frozen=True)
class PatchSpec:
    kind: str                                   # a name in patching.kinds.KINDS
    direction: str = "denoise"                  # denoise: corrupt run, clean activations in
    metric: str = "logit_diff"                  # a name in metrics.METRICS or "pkg.mod:fn"
    per_position: bool = False                  # head kinds: one cell per position too
    layers: tuple[int, ...] | None = None       # None = every layer
    positions: tuple[int, ...] | None = None    # None = every position
    heads: tuple[tuple[int, int], ...] | None = None   # (layer, head) pairs; None = every head
    model: str = "default"
    prepend_bos: bool = True
    saes: str | None = None                     # kind "feature": a folder of sae-lens SAEs; None = the model's own

    def __post_init__(self):
        from patching.kinds import KINDS
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        check_direction(self.direction)
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"metric must be a metric name, not {self.metric!r}")
        object.__setattr__(self, "layers", _ints(self.layers, "layers"))
        object.__setattr__(self, "positions", _ints(self.positions, "positions"))
        if self.heads is not None:
            heads = tuple(sorted({(int(l), int(h)) for l, h in self.heads}))
            if not heads:
                raise ValueError("heads is empty; leave it out to use all heads")
            object.__setattr__(self, "heads", heads)
        if self.per_position and not KINDS[self.kind].has_per_position:
            raise ValueError(f"kind {self.kind!r} is already indexed by position; "
                             "per_position applies to head and feature kinds only")
        if self.saes is not None and self.kind != "feature":
            raise ValueError(f"saes={self.saes!r} applies to kind 'feature', not {self.kind!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("layers", "positions"):
            d[key] = list(d[key]) if d[key] is not None else None
        d["heads"] = [list(h) for h in self.heads] if self.heads is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PatchSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown PatchSpec fields {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        for key in ("layers", "positions"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        if d.get("heads") is not None:
            d["heads"] = tuple(tuple(h) for h in d["heads"])
        return cls(**d)


MAX_ENTRIES = 100_000        # more layers / positions / heads than any model has: refused before building
SHOWN_CHARS = 60             # how much of a bad field an error message quotes


def shorten(text, limit: int = SHOWN_CHARS) -> str:
    """`text` as a repr, cut to `limit` characters with '…' (so a message stays short).

    >>> shorten("0-" + "9" * 100)
    "'0-9999999999999999999999999999999999999999999999999999999999…'"
    """
    text = str(text)
    return repr(text) if len(text) <= limit else repr(text[:limit])[:-1] + "…'"


def _whole(bit: str) -> int:
    """A non-negative decimal number of at most 18 digits; ValueError otherwise."""
    if not bit.isdigit() or not bit.isascii() or len(bit) > 18:
        raise ValueError
    return int(bit)


def _range(part: str) -> range:
    """'3' -> range(3, 4); '0-5' -> range(0, 6); ValueError for anything else."""
    lo, _, hi = part.partition("-")
    first = _whole(lo)
    last = _whole(hi) if _ else first
    if last < first:
        raise ValueError
    return range(first, last + 1)


def _too_many(what: str, n: int, text) -> ValueError:
    return ValueError(f"{what} {shorten(text)} names {n:,} entries, more than any model has "
                      f"(at most {MAX_ENTRIES:,}); leave it out to use all {what}")


def parse_int_list(text: str | None, what: str) -> tuple[int, ...] | None:
    """'0-5,8' -> (0, 1, 2, 3, 4, 5, 8); '' or None -> None. Sizes are checked before any list
    is built: more than MAX_ENTRIES entries is refused, naming the field (cut to 60 characters).

    >>> parse_int_list("0-2,7", "layers")
    (0, 1, 2, 7)
    """
    if text is None or not str(text).strip():
        return None
    ranges, total = [], 0
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        try:
            span = _range(part)
        except ValueError:
            raise ValueError(f"bad {what} {shorten(part)} in {shorten(text)}; write numbers and ranges "
                             "like '0-5,8'") from None
        total += len(span)
        if total > MAX_ENTRIES:
            raise _too_many(what, total, text)
        ranges.append(span)
    return tuple(v for span in ranges for v in span)


def parse_heads(text: str | None) -> tuple[tuple[int, int], ...] | None:
    """'1.4,9.9' -> ((1, 4), (9, 9)); a bare layer '3' is not a head. More than MAX_ENTRIES
    heads is refused.

    >>> parse_heads("1.4, 9.9")
    ((1, 4), (9, 9))
    """
    if text is None or not str(text).strip():
        return None
    heads = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        bits = part.split(".")
        try:
            if len(bits) != 2:
                raise ValueError
            heads.append((_whole(bits[0]), _whole(bits[1])))
        except ValueError:
            raise ValueError(f"bad head {shorten(part)} in {shorten(text)}; write LAYER.HEAD pairs "
                             "like '1.4,9.9'") from None
        if len(heads) > MAX_ENTRIES:
            raise _too_many("heads", len(heads), text)
    return tuple(heads)
