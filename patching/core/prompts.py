"""Prompt pairs: tokenised, aligned and validated, with errors that show the tokens.

Clean and corrupt of one pair tokenise to the same length: patching compares activations
position by position. A set whose pairs all have one length has a shared position axis (token
labels from the first pair). A set may mix lengths when every pair names its role positions
(`roles`: ROLE -> token index, BOS included; the pairs CSV's `positions` column, e.g.
`IO:2 S1:4 S2:10 END:14`): it is aligned by those names, and per-position sweeps report one
value per role (`patching.methods.sweep`). A mixed set without roles is refused with the lengths
named and how to add roles.

>>> ps = PromptSet.from_pairs(model, [PromptPair("When Mary and John went to the store, John gave a drink to",
...     "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")])   # doctest: +SKIP
>>> ps.clean_tokens.shape                                                                  # doctest: +SKIP
torch.Size([1, 15])
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

CSV_COLUMNS = ("clean", "corrupt", "answer", "wrong")
POSITIONS_COLUMN = "positions"    # optional: the pair's role positions, "ROLE:INDEX ..." (index with BOS)
ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_+\-]{0,31}")     # IO, S1, S1+1, END, ...
MAX_ROLES = 64
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


Roles = tuple[tuple[str, int], ...]       # ((role name, token index with BOS), ...) in the given order


def parse_roles(value) -> Roles:
    """Role positions from "ROLE:INDEX ..." text, a {role: index} dict or (role, index) pairs;
    () for None / "" (no roles). ValueError naming the bad entry and the accepted form.

    >>> parse_roles("IO:2 S1:4 S1+1:5 END:14")
    (('IO', 2), ('S1', 4), ('S1+1', 5), ('END', 14))
    >>> parse_roles({"IO": 2}), parse_roles("")
    ((('IO', 2),), ())
    """
    if value is None:
        return ()
    if isinstance(value, str):
        entries = []
        for item in value.split():
            name, colon, index = item.rpartition(":")
            if not colon or not name or not re.fullmatch(r"[0-9]{1,6}", index):
                raise ValueError(f"role position {item[:40]!r} is not ROLE:INDEX; write e.g. "
                                 "'IO:2 S1:4 S2:10 END:14' (token indices, BOS included)")
            entries.append((name, int(index)))
    else:
        entries = list(value.items() if isinstance(value, dict) else value)
    out = []
    for entry in entries:
        try:
            name, index = entry
        except (TypeError, ValueError):
            raise ValueError(f"role position {entry!r} is not a (role, index) pair") from None
        if not isinstance(name, str) or not ROLE_NAME.fullmatch(name):
            raise ValueError(f"role name {str(name)[:40]!r} is not accepted; use letters, digits, _ + - "
                             "(up to 32 characters, starting with a letter), e.g. IO, S1, S1+1, END")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"role {name}: index {index!r} is not a token index (a whole number >= 0)")
        if any(name == n for n, _ in out):
            raise ValueError(f"role {name} is given twice; name each role once")
        out.append((name, index))
    if len(out) > MAX_ROLES:
        raise ValueError(f"{len(out)} roles given; at most {MAX_ROLES}")
    return tuple(out)


def roles_text(roles: Roles) -> str:
    """The `positions` cell of roles (what `parse_roles` reads back).

    >>> roles_text((("IO", 2), ("END", 14)))
    'IO:2 END:14'
    """
    return " ".join(f"{name}:{index}" for name, index in roles)


@dataclass(frozen=True)
class PromptPair:
    clean: str
    corrupt: str
    answer: str        # the clean prompt's next token, e.g. " Mary" (leading space matters)
    wrong: str         # the corrupt prompt's next token, e.g. " John"
    positions: Roles = ()   # role positions ("IO:2 S1:4" text or a dict accepted); () = none

    def __post_init__(self):
        object.__setattr__(self, "positions", parse_roles(self.positions))
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
        return PromptPair(p.clean, p.corrupt, p.answer, p.wrong, getattr(p, "positions", ()))
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
                     f"not a single token{hint}")


PAD_ID = 0      # what fills a shorter pair's token row in a set of mixed lengths (never run)


def _padded(rows: list[list[int]], width: int, device) -> Tensor:
    """[len(rows), width] token ids, each row right-padded with PAD_ID."""
    return torch.tensor([r + [PAD_ID] * (width - len(r)) for r in rows], dtype=torch.long, device=device)


def _length_groups_text(lengths) -> str:
    """'14 tokens (pairs 0, 2), 15 tokens (pair 1)': each length and the pairs that have it.

    >>> _length_groups_text([14, 15, 14])
    '14 tokens (pairs 0, 2), 15 tokens (pair 1)'
    """
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)

    def which(idx):
        shown = ", ".join(map(str, idx[:5])) + (f", ... {len(idx) - 5} more" if len(idx) > 5 else "")
        return f"pair{'s' if len(idx) > 1 else ''} {shown}"
    return ", ".join(f"{n} tokens ({which(idx)})" for n, idx in groups.items())


def mixed_lengths_message(lengths) -> str:
    """The refusal of a set of mixed lengths without role positions (names the lengths and how
    to add roles)."""
    return (f"all pairs must have the same token length unless they name role positions: this set has "
            f"{_length_groups_text(lengths)}; add a `positions` column to the pairs CSV "
            "(ROLE:INDEX, token indices with BOS, e.g. 'IO:2 S1:4 S2:10 END:14') or pass roles= to "
            "PromptSet.from_pairs to align them by role, or split the set by length")


def _check_roles(pairs: tuple[PromptPair, ...], roles, lengths: tuple[int, ...]) -> tuple[Roles, ...] | None:
    """Each pair's validated roles (from `roles`, else the pairs' own positions), or None when no
    pair names any; ValueError when only some pairs name them, the names differ between pairs,
    an index is past the pair's last token, or the lengths differ without roles."""
    if roles is not None:
        roles = list(roles)
        if len(roles) != len(pairs):
            raise ValueError(f"roles has {len(roles)} entries for {len(pairs)} pairs; give one per pair")
        given = [parse_roles(r) for r in roles]
    else:
        given = [p.positions for p in pairs]
    if not any(given):
        if len(set(lengths)) > 1:
            raise ValueError(mixed_lengths_message(lengths))
        return None
    names = [n for n, _ in given[0]]
    for i, (r, n_tok) in enumerate(zip(given, lengths)):
        have = [n for n, _ in r]
        if set(have) != set(names):
            missing, extra = [n for n in names if n not in have], [n for n in have if n not in names]
            raise ValueError(f"pair {i} names roles {' '.join(have) or '(none)'}, pair 0 names {' '.join(names)}"
                             + (f"; missing {' '.join(missing)}" if missing else "")
                             + (f"; extra {' '.join(extra)}" if extra else "")
                             + "; every pair must name the same roles")
        for name, index in r:
            if index >= n_tok:
                raise ValueError(f"pair {i}: role {name} at token {index} is past the prompt's last token "
                                 f"({n_tok} tokens, 0-{n_tok - 1} with BOS)")
    return tuple(tuple((n, dict(r)[n]) for n in names) for r in given)


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
    # each pair's role positions (role -> token index, one order for all pairs), or None
    roles: tuple[Roles, ...] | None = None
    # each pair's token length; in a set of mixed lengths (roles required) the token tensors are
    # right-padded to the longest with PAD_ID and only `subset` / `by_length` groups run
    lengths: tuple[int, ...] = ()
    # a mixed set's axis labels per length: the clean tokens of the first pair of that length
    labels_by_length: dict[int, tuple[str, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not self.lengths:
            object.__setattr__(self, "lengths", (int(self.clean_tokens.shape[1]),) * len(self.pairs))
        if len(self.lengths) != len(self.pairs):
            raise ValueError(f"lengths has {len(self.lengths)} entries for {len(self.pairs)} pairs")
        if self.is_mixed and self.roles is None:
            raise ValueError(mixed_lengths_message(self.lengths))

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    @property
    def is_mixed(self) -> bool:
        """Whether the pairs have different token lengths (a set aligned by roles)."""
        return len(set(self.lengths)) > 1

    @property
    def n_pos(self) -> int:
        """The pairs' shared token length; ValueError for a set of mixed lengths (no shared axis)."""
        self.require_one_length("a shared position axis")
        return self.clean_tokens.shape[1]

    def require_one_length(self, what: str) -> None:
        """ValueError when the pairs have different lengths, naming them and `what` needs one.

        >>> ps.require_one_length("path patching")      # doctest: +SKIP
        ValueError: path patching needs pairs of one token length; this set has 14 tokens (pairs 0, 2), ...
        """
        if self.is_mixed:
            raise ValueError(f"{what} needs pairs of one token length; this set has "
                             f"{_length_groups_text(self.lengths)}; run one length at a time "
                             "(PromptSet.by_length) or use an exact sweep, which aligns them by role")

    @property
    def role_names(self) -> tuple[str, ...]:
        """The roles every pair names, in the order given (() without roles)."""
        return tuple(name for name, _ in self.roles[0]) if self.roles else ()

    def role_positions(self) -> list[list[int]]:
        """[n_pairs][n_roles] each pair's token index of each role (in `role_names` order).

        >>> ps.role_positions()          # doctest: +SKIP
        [[2, 4, 5, 10, 14], [4, 2, 3, 10, 14]]
        """
        names = self.role_names
        return [[dict(r)[name] for name in names] for r in (self.roles or ())]

    def subset(self, indices) -> "PromptSet":
        """The pairs at `indices`, as a PromptSet (labels from the first pair of the set; token
        tensors cut to the longest chosen pair, so one length group is an ordinary set).

        >>> ps.subset([0]).n_pairs          # doctest: +SKIP
        1
        """
        idx = list(indices)
        lengths = tuple(self.lengths[i] for i in idx)
        width = max(lengths, default=self.clean_tokens.shape[1])
        one = len(set(lengths)) == 1
        labels = self.labels_by_length.get(lengths[0], self.str_tokens) if one and idx else self.str_tokens
        return PromptSet(tuple(self.pairs[i] for i in idx), self.clean_tokens[idx, :width],
                         self.corrupt_tokens[idx, :width], self.answer_ids[idx], self.wrong_ids[idx],
                         labels, self.prepend_bos,
                         tuple(self.roles[i] for i in idx) if self.roles is not None else None, lengths,
                         {n: t for n, t in self.labels_by_length.items() if n in lengths})

    def by_length(self) -> list[tuple[list[int], "PromptSet"]]:
        """The set split by token length: (pair indices, the ordinary set of those pairs), in the
        order each length first appears.

        >>> [(idx, g.n_pos) for idx, g in ps.by_length()]          # doctest: +SKIP
        [([0, 2], 14), ([1], 15)]
        """
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(self.lengths):
            groups.setdefault(n, []).append(i)
        return [(idx, self.subset(idx)) for idx in groups.values()]

    def differing_positions(self) -> list[int]:
        """Positions where any pair's clean and corrupt tokens differ."""
        return (self.clean_tokens != self.corrupt_tokens).any(0).nonzero()[:, 0].tolist()

    @classmethod
    def from_pairs(cls, model, pairs, prepend_bos: bool = True, roles=None) -> "PromptSet":
        """Tokenise and validate; ValueError naming the pair and showing the tokens.

        roles: per pair, its role positions ({"IO": 2, "S1": 4, ...}, "IO:2 S1:4" text or (role,
        index) pairs; token indices with BOS) in place of the pairs' own `positions`. Pairs of
        different lengths need them (they are aligned by role).

        >>> ps = PromptSet.from_pairs(model, [("A B C", "A B D", " Mary", " John"), ("A B C D", "A B C E", " Mary", " John")],
        ...                           roles=[{"X": 2, "END": 3}, {"X": 2, "END": 4}])
        >>> ps.is_mixed, ps.role_names, ps.role_positions()
        (True, ('X', 'END'), [[2, 3], [2, 4]])
        """
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
            clean.append(c)
            corrupt.append(k)
            answer.append(_single_token(model, p.answer, "answer", where))
            wrong.append(_single_token(model, p.wrong, "wrong", where))
            if answer[-1] == wrong[-1]:
                raise ValueError(f"{where}answer and wrong are the same token {p.answer!r}; wrong must be "
                                 "a different token (the corrupt prompt's next token), e.g. ' John' for ' Mary'")
        lengths = tuple(len(c) for c in clean)
        set_roles = _check_roles(pairs, roles, lengths)
        device = model.device
        width = max(lengths)
        labels = {n: tuple(model.to_str_tokens(clean[lengths.index(n)])) for n in dict.fromkeys(lengths)}
        return cls(pairs, _padded(clean, width, device), _padded(corrupt, width, device),
                   torch.tensor(answer, device=device), torch.tensor(wrong, device=device),
                   labels[lengths[0]], prepend_bos, set_roles, lengths,
                   labels if len(labels) > 1 else {})

    @classmethod
    def single(cls, model, clean: str, corrupt: str, answer: str, wrong: str,
               prepend_bos: bool = True) -> "PromptSet":
        return cls.from_pairs(model, [PromptPair(clean, corrupt, answer, wrong)], prepend_bos)

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
                   torch.tensor([w], device=model.device), tuple(model.to_str_tokens(ids)), prepend_bos)

    @classmethod
    def from_csv(cls, model, source, prepend_bos: bool = True) -> "PromptSet":
        return cls.from_pairs(model, read_pairs_csv(source), prepend_bos)


def read_pairs_csv(source) -> list[PromptPair]:
    """A pairs CSV (columns clean,corrupt,answer,wrong, and optionally positions: the pair's role
    positions "ROLE:INDEX ...") from a path, text or bytes.

    >>> read_pairs_csv("clean,corrupt,answer,wrong\\nA B,A C, B, C\\n")
    [PromptPair(clean='A B', corrupt='A C', answer=' B', wrong=' C', positions=())]
    >>> read_pairs_csv("clean,corrupt,answer,wrong,positions\\nA B,A C, B, C,X:1 END:2\\n")[0].positions
    (('X', 1), ('END', 2))
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
        at = header.index(POSITIONS_COLUMN) if POSITIONS_COLUMN in header else None
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
                pairs.append(PromptPair(*(row[col[c]] for c in CSV_COLUMNS),
                                        positions=row[at] if at is not None else ()))
            except ValueError as exc:
                raise ValueError(f"pairs CSV row {line}: {exc}") from None
    except csv.Error as exc:
        raise ValueError(f"pairs CSV cannot be parsed: {exc}") from None
    if not pairs:
        raise ValueError("pairs CSV has a header but no rows")
    return pairs
