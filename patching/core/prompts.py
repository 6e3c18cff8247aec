"""Prompt pairs: tokenised, aligned and validated, with errors that show the tokens.

All pairs of one set must tokenise to the same length (clean and corrupt alike): patching
compares activations position by position, and a shared length keeps the position axis (and
its token labels) meaningful across pairs. Sets mixing lengths are refused with the lengths
named; split them into one set per length.

>>> ps = PromptSet.from_pairs(model, [PromptPair("When Mary and John went to the store, John gave a drink to",
...     "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")])   # doctest: +SKIP
>>> ps.clean_tokens.shape                                                                  # doctest: +SKIP
torch.Size([1, 15])
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from metrics import MULTI_TOKEN_METRICS

CSV_COLUMNS = ("clean", "corrupt", "answer", "wrong")
MAX_PAIRS = 10_000
MAX_CSV_LINES = 4 * MAX_PAIRS     # rows read, blank ones included: a file of blank lines stops here too
MAX_CSV_LINE_CHARS = 2**20        # one line (a file with no newline, e.g. /dev/zero, stops here)
MAX_CSV_CHARS = 64 * 2**20        # the whole file


def _bounded_lines(f, line_limit: int = MAX_CSV_LINE_CHARS, total_limit: int = MAX_CSV_CHARS):
    """Lines of the text stream `f`, read at most `line_limit` characters at a time; ValueError once
    a line or the whole stream is longer than its limit, before more is read.

    >>> list(_bounded_lines(io.StringIO("a\\nb\\n")))
    ['a\\n', 'b\\n']
    """
    total = 0
    while line := f.readline(line_limit + 1):
        total += len(line)
        if len(line) > line_limit:
            raise ValueError(f"pairs CSV has a line longer than {line_limit:,} characters; "
                             "give one pair per line (clean,corrupt,answer,wrong)")
        if total > total_limit:
            raise ValueError(f"pairs CSV is larger than {total_limit // 2**20} MB; at most {MAX_PAIRS:,} "
                             "pairs in one sweep; split it into several files")
        yield line


def lone_surrogate(value: str) -> int | None:
    """The index of the first lone surrogate in `value` (text no file or tokenizer can hold), or None.

    >>> lone_surrogate("ab" + chr(0xD800)), lone_surrogate("ok")
    (2, None)
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


@dataclass(frozen=True)
class PromptPair:
    clean: str
    corrupt: str
    answer: str        # the clean prompt's next token, e.g. " Mary" (leading space matters)
    wrong: str         # the corrupt prompt's next token, e.g. " John"

    def __post_init__(self):
        for name in ("clean", "corrupt", "answer", "wrong"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"{name} must be text, not {type(value).__name__}")
            at = lone_surrogate(value)
            if at is not None:
                raise ValueError(f"the {name} text has a lone surrogate {value[at]!r} at character {at}, "
                                 "which is not valid Unicode; give UTF-8 text")
            if name in ("clean", "corrupt") and not value.strip():
                raise ValueError(f"the {name} prompt is empty; type the text the model should continue")
            if name in ("answer", "wrong") and value == "":
                raise ValueError(f"the {name} token is empty; give one token, e.g. ' Mary'")


def _as_pair(p) -> PromptPair:
    """A PromptPair from a PromptPair, anything with clean/corrupt/answer/wrong (e.g. a task's
    TaskPair), or a 4-tuple."""
    if isinstance(p, PromptPair):
        return p
    if all(hasattr(p, f) for f in ("clean", "corrupt", "answer", "wrong")):
        return PromptPair(p.clean, p.corrupt, p.answer, p.wrong)
    return PromptPair(*p)


def _show(tokens: list[str], around: int = 0, limit: int = 24) -> str:
    """Tokens as a list of reprs (control characters escaped); long lists are cut to `limit`
    tokens from `around` on, with the cut parts counted, so a message stays one readable line."""
    if len(tokens) <= limit:
        return "[" + ", ".join(repr(t) for t in tokens) + "]"
    lo = max(0, min(around - limit // 2, len(tokens) - limit))
    hi = lo + limit
    head = [f"... {lo} tokens"] if lo else []
    tail = [f"... {len(tokens) - hi} more"] if hi < len(tokens) else []
    return "[" + ", ".join(head + [repr(t) for t in tokens[lo:hi]] + tail) + "]"


NO_TOKEN = -1          # answer_ids / wrong_ids of a one-prompt set without that token (PromptSet.prompt)


def _single_token(model, text: str, what: str, where: str) -> int:
    ids = model.encode(text)
    if len(ids) == 1:
        return ids[0]
    pieces = model.to_str_tokens(ids[:24])
    listed = _show(pieces) if len(ids) <= 24 else _show(pieces)[:-1] + f", ... {len(ids) - 24} more]"
    hint = ""
    if not text.startswith(" ") and len(model.encode(" " + text)) == 1:
        hint = f"; did you mean {' ' + text!r} with a leading space?"
    elif any("\ufffd" in piece for piece in pieces):
        hint = "; the model has no single token for it (it splits into bytes); choose a word the model has as one token"
    elif pieces and pieces[0].strip():
        hint = f"; use a single token such as {pieces[0]!r}"
    shown = repr(text) if len(text) <= 80 else repr(text[:80]) + "..."
    raise ValueError(f"{where}{what} {shown} is {len(ids)} tokens {listed}, "
                     f"not a single token{hint} (answers of several tokens need the metric "
                     f"{' or '.join(MULTI_TOKEN_METRICS)})")


def _answer_token(model, text: str, what: str, where: str, multi_token: bool) -> int:
    """The token id of an answer / wrong; with `multi_token`, NO_TOKEN for one of several
    tokens (its ids are the metric's to read: `metrics.sequence.token_seqs`)."""
    if multi_token and len(model.encode(text)) != 1:
        return NO_TOKEN
    return _single_token(model, text, what, where)


def _diff_view(model, clean: list[int], corrupt: list[int]) -> str:
    first = next((i for i, (x, y) in enumerate(zip(clean, corrupt)) if x != y), min(len(clean), len(corrupt)))

    def window(ids: list[int], limit: int = 24) -> list[str]:    # decode only what _show shows
        lo = max(0, min(first - limit // 2, len(ids) - limit))
        return [""] * lo + model.to_str_tokens(ids[lo:lo + limit]) + [""] * max(0, len(ids) - lo - limit)

    a, b = window(clean), window(corrupt)
    return (f"clean {len(a)} tokens {_show(a, first)}; corrupt {len(b)} tokens {_show(b, first)}; "
            f"they first differ at position {first}")


@dataclass(frozen=True, eq=False)
class PromptSet:
    pairs: tuple[PromptPair, ...]
    clean_tokens: Tensor = field(repr=False)     # [n_pairs, pos]
    corrupt_tokens: Tensor = field(repr=False)   # [n_pairs, pos]
    answer_ids: Tensor = field(repr=False)       # [n_pairs]
    wrong_ids: Tensor = field(repr=False)        # [n_pairs]
    str_tokens: tuple[str, ...] = ()             # the first pair's clean tokens (axis labels)
    prepend_bos: bool = True
    # the tokenizer it was built with (text -> ids), for metrics that read more tokens than
    # answer / wrong (greater-than's years, multi-token answers); answer_ids / wrong_ids hold
    # NO_TOKEN where a multi_token set's answer is several tokens
    encode: Callable[[str], list[int]] | None = field(default=None, repr=False)

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    @property
    def n_pos(self) -> int:
        return self.clean_tokens.shape[1]

    def subset(self, indices) -> "PromptSet":
        """The pairs at `indices`, as a PromptSet (labels from the first pair of the set)."""
        idx = list(indices)
        return PromptSet(tuple(self.pairs[i] for i in idx), self.clean_tokens[idx], self.corrupt_tokens[idx],
                         self.answer_ids[idx], self.wrong_ids[idx], self.str_tokens, self.prepend_bos,
                         encode=self.encode)

    def differing_positions(self) -> list[int]:
        """Positions where any pair's clean and corrupt tokens differ."""
        return (self.clean_tokens != self.corrupt_tokens).any(0).nonzero()[:, 0].tolist()

    @classmethod
    def from_pairs(cls, model, pairs, prepend_bos: bool = True, *, multi_token: bool = False) -> "PromptSet":
        """Tokenise and validate; ValueError naming the pair and showing the tokens.
        multi_token: answers and wrongs may be several tokens (for `seq_logprob_diff`)."""
        pairs = tuple(_as_pair(p) for p in pairs)
        if not pairs:
            raise ValueError("no prompt pairs given; give at least one clean/corrupt pair")
        if len(pairs) > MAX_PAIRS:
            raise ValueError(f"too many pairs: {len(pairs)}, at most {MAX_PAIRS} in one set; split it")
        bos = [model.bos_token_id] if prepend_bos and model.bos_token_id is not None else []
        clean, corrupt, answer, wrong = [], [], [], []
        for n, p in enumerate(pairs):
            where = f"pair {n}: " if len(pairs) > 1 else ""
            c, k = bos + model.encode(p.clean), bos + model.encode(p.corrupt)
            for what, toks in (("clean", c), ("corrupt", k)):
                if len(toks) > model.n_ctx:
                    raise ValueError(f"{where}{what} prompt is {len(toks)} tokens, longer than the model's "
                                     f"context of {model.n_ctx} tokens; shorten it")
            if len(c) != len(k):
                raise ValueError(f"{where}clean and corrupt prompts must have the same number of "
                                 f"tokens: {_diff_view(model, c, k)}")
            if clean and len(c) != len(clean[0]):
                raise ValueError(f"all pairs must have the same token length: pair 0 has "
                                 f"{len(clean[0])} tokens, pair {n} has {len(c)}; split the set by length")
            clean.append(c)
            corrupt.append(k)
            answer.append(_answer_token(model, p.answer, "answer", where, multi_token))
            wrong.append(_answer_token(model, p.wrong, "wrong", where, multi_token))
            if answer[-1] == wrong[-1] and (answer[-1] != NO_TOKEN or model.encode(p.answer) == model.encode(p.wrong)):
                raise ValueError(f"{where}answer and wrong are the same token {p.answer!r}; wrong must be "
                                 "a different token (the corrupt prompt's next token), e.g. ' John' for ' Mary'")
        device = model.device
        return cls(pairs, torch.tensor(clean, device=device), torch.tensor(corrupt, device=device),
                   torch.tensor(answer, device=device), torch.tensor(wrong, device=device),
                   tuple(model.to_str_tokens(clean[0])), prepend_bos, encode=model.encode)

    @classmethod
    def single(cls, model, clean: str, corrupt: str, answer: str, wrong: str,
               prepend_bos: bool = True, *, multi_token: bool = False) -> "PromptSet":
        return cls.from_pairs(model, [PromptPair(clean, corrupt, answer, wrong)], prepend_bos,
                              multi_token=multi_token)

    @classmethod
    def prompt(cls, model, text: str, answer: str | None = None, wrong: str | None = None,
               prepend_bos: bool = True) -> "PromptSet":
        """One prompt for the views that read one run (logit lens, top-k, attention): the corrupt
        run is the same text, and a missing answer / wrong token is id -1 (`NO_TOKEN`: the views
        leave its columns empty).

        >>> ps = PromptSet.prompt(model, "When Mary and John went to the store, John gave a drink to")
        >>> ps.n_pairs, int(ps.answer_ids[0]) == NO_TOKEN, bool((ps.clean_tokens == ps.corrupt_tokens).all())
        (1, True, True)
        """
        pair = PromptPair(text, text, answer or " ", wrong or " ")          # validates the text
        bos = [model.bos_token_id] if prepend_bos and model.bos_token_id is not None else []
        ids = bos + model.encode(pair.clean)
        if len(ids) > model.n_ctx:
            raise ValueError(f"the prompt is {len(ids)} tokens, longer than the model's context of "
                             f"{model.n_ctx} tokens; shorten it")
        a = _single_token(model, answer, "answer", "") if answer else NO_TOKEN
        w = _single_token(model, wrong, "wrong", "") if wrong else NO_TOKEN
        tokens = torch.tensor([ids], device=model.device)
        return cls((pair,), tokens, tokens.clone(), torch.tensor([a], device=model.device),
                   torch.tensor([w], device=model.device), tuple(model.to_str_tokens(ids)), prepend_bos,
                   encode=model.encode)

    @classmethod
    def from_csv(cls, model, source, prepend_bos: bool = True, *, multi_token: bool = False) -> "PromptSet":
        return cls.from_pairs(model, read_pairs_csv(source), prepend_bos, multi_token=multi_token)


def read_pairs_csv(source) -> list[PromptPair]:
    """A pairs CSV (columns clean,corrupt,answer,wrong) from a path, text or bytes.

    >>> read_pairs_csv("clean,corrupt,answer,wrong\\nA B,A C, B, C\\n")
    [PromptPair(clean='A B', corrupt='A C', answer=' B', wrong=' C')]
    """
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and source.endswith(".csv")):
        try:    # streamed: a huge file is refused after MAX_PAIRS + 1 rows, without reading all of it
            with open(source, encoding="utf-8-sig", newline="") as f:
                return _pairs_from_lines(_bounded_lines(f))
        except FileNotFoundError:
            raise ValueError(f"pairs file {str(source)!r} does not exist") from None
        except IsADirectoryError:
            raise ValueError(f"pairs file {str(source)!r} is a directory, not a CSV file") from None
        except UnicodeDecodeError:
            raise ValueError(f"pairs file {str(source)!r} is not UTF-8 text") from None
        except OSError as exc:
            raise ValueError(f"cannot read pairs file {str(source)!r}: {exc.strerror}") from None
    if isinstance(source, bytes):
        try:
            text = source.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ValueError("pairs CSV is not UTF-8 text; save it as UTF-8 CSV") from None
    else:
        text = str(source)
    return _pairs_from_lines(_bounded_lines(io.StringIO(text.lstrip("\ufeff"))))


def _pairs_from_lines(lines) -> list[PromptPair]:
    rows = csv.reader(lines)      # read lazily: a huge file stops at MAX_PAIRS + 1 rows
    try:
        first = next(rows, None)
        if first is None or not any(cell.strip() for cell in first):
            raise ValueError("pairs CSV is empty; expected a header clean,corrupt,answer,wrong")
        header = [h.strip().lower() for h in first]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"pairs CSV is missing column(s) {', '.join(missing)}; header is "
                             f"{','.join(first)[:200]!r}, expected clean,corrupt,answer,wrong")
        col = {c: header.index(c) for c in CSV_COLUMNS}
        pairs = []
        for count, row in enumerate(rows, start=2):
            line = rows.line_num
            if count > MAX_CSV_LINES:
                raise ValueError(f"pairs CSV has more than {MAX_CSV_LINES:,} rows (blank ones included); "
                                 f"at most {MAX_PAIRS:,} pairs in one sweep; split it into several files")
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                quote = " (an unclosed \" quote?)" if any("\n" in cell for cell in row) else ""
                raise ValueError(f"pairs CSV row {line} has {len(row)} cells, expected {len(header)} "
                                 f"({','.join(first)[:200]}){quote}")
            if len(pairs) == MAX_PAIRS:
                raise ValueError(f"pairs CSV has too many pairs: more than {MAX_PAIRS}, the most one "
                                 "sweep takes; split it into several files")
            try:
                pairs.append(PromptPair(*(row[col[c]] for c in CSV_COLUMNS)))
            except ValueError as exc:
                raise ValueError(f"pairs CSV row {line}: {exc}") from None
    except csv.Error as exc:
        raise ValueError(f"pairs CSV cannot be parsed: {exc}") from None
    if not pairs:
        raise ValueError("pairs CSV has a header but no rows")
    return pairs
