"""One node type and one text syntax for the components every method names.

A `Node` is a place in the model: a head (`L1H3`), an MLP (`MLP2`), every head of a layer
(`ATTN0`), a layer's residual stream (`resid:0`), a head's query / key / value input (`q:1.3`;
on grouped-query models `k:` / `v:` name key/value heads), the logits (`logits`) or the token
embeddings (`embed`); optionally at one position (`@5`). One grammar reads every spelling:

| node | short form (`name`) | long form (`label`) | also read |
|---|---|---|---|
| head | `L1H3` | `head:1.3` | `1.3` (a sender), `l1h3` |
| MLP | `MLP2` | `mlp:2` | `mlp2` |
| attention layer | `ATTN0` | `attn:0` | |
| residual stream | | `resid:0` | |
| q / k / v input | | `q:1.3` | |
| logits, embeddings | | `logits`, `embed` | `resid_final` (logits) |
| SAE feature (block input) | `L1F12` | `feature:1.12` | `l1f12` |
| SAE error node | `L1ERR` | `error:1` | `l1err` |

Circuits print the short form, path patching and edge scores the long form (both are contract
outputs of their CSVs). A role (`sender`, `receiver`, `component`) limits the kinds accepted.

>>> parse_node("L1H3") == parse_node("head:1.3") == Node("head", 1, 3)
True
>>> parse_node("q:2.1", "receiver").label, parse_node("mlp:0").name
('q:2.1', 'MLP0')
"""
from __future__ import annotations

import re
from dataclasses import dataclass

NODE_KINDS = ("head", "mlp", "attn", "resid", "q", "k", "v", "logits", "embed", "feature", "error")
HEADED = ("head", "q", "k", "v")                 # kinds that name a head
INDEXED = HEADED + ("feature",)                  # kinds that name a unit (`head` holds a feature's index)
LAYERLESS = ("logits", "embed")
ROLES = {                                        # role -> (kinds, accepted spellings)
    "sender": (("head", "mlp", "resid"),
               "'head:L.H', 'L.H', 'head:L.H@POS', 'mlp:L', 'mlp:L@POS', 'resid:L@POS'"),
    "receiver": (("q", "k", "v", "mlp", "logits"), "'q:L.H', 'k:L.H', 'v:L.H', 'mlp:L', 'logits'"),
    "component": (("head", "mlp", "attn", "feature", "error"),
                  "L<layer>H<head>, MLP<layer> or ATTN<layer>, e.g. L0H3,MLP1 (SAE units: L<layer>F<feature>, "
                  "L<layer>ERR for an SAE's error)"),
}
_LONG = re.compile(r"^(?:(?P<kind>[a-z]+):)?(?P<layer>\d+)(?:\.(?P<head>\d+))?(?:@(?P<pos>\d+))?$")
_SHORT = re.compile(r"^(?:L(?P<hl>\d+)H(?P<h>\d+)|MLP(?P<ml>\d+)|ATTN(?P<al>\d+)|L(?P<fl>\d+)F(?P<f>\d+)|L(?P<el>\d+)ERR)"
                    r"(?:@(?P<pos>\d+))?$", re.IGNORECASE)


@dataclass(frozen=True, eq=False)
class Node:
    """kind: one of NODE_KINDS; layer (None for logits / embed); head (head / q / k / v: a query
    head, or a key/value head for k and v; feature: the SAE feature's index); pos: one position,
    None = every position."""
    kind: str
    layer: int | None = None
    head: int | None = None
    pos: int | None = None

    def __post_init__(self):
        if self.kind not in NODE_KINDS:
            raise ValueError(f"node kind must be one of {', '.join(NODE_KINDS)}, not {self.kind!r}")
        if (self.head is None) == (self.kind in INDEXED):
            raise ValueError(f"a {self.kind} node {'needs' if self.kind in INDEXED else 'takes no'} "
                             + ("index" if self.kind == "feature" else "head"))
        if (self.layer is None) != (self.kind in LAYERLESS):
            raise ValueError(f"a {self.kind} node {'takes no' if self.kind in LAYERLESS else 'needs a'} layer")

    @property
    def key(self) -> tuple:
        return (self.kind, self.layer, self.head, self.pos)

    def __eq__(self, other) -> bool:
        return isinstance(other, Node) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __lt__(self, other: "Node") -> bool:
        """Layer order (then kind, head, position), as circuits list components."""
        def order(n: Node) -> tuple:
            return (-1 if n.layer is None else n.layer, n.kind, -1 if n.head is None else n.head,
                    -1 if n.pos is None else n.pos)
        return order(self) < order(other)

    @property
    def label(self) -> str:
        """The long form: 'head:1.2@5', 'mlp:0', 'q:2.1', 'logits'."""
        if self.kind in LAYERLESS:
            return self.kind
        text = f"{self.kind}:{self.layer}" + (f".{self.head}" if self.head is not None else "")
        return text + (f"@{self.pos}" if self.pos is not None else "")

    @property
    def name(self) -> str:
        """The short form: 'L1H4', 'MLP2', 'ATTN0' (the long form for other kinds)."""
        short = {"head": f"L{self.layer}H{self.head}", "mlp": f"MLP{self.layer}", "attn": f"ATTN{self.layer}",
                 "feature": f"L{self.layer}F{self.head}", "error": f"L{self.layer}ERR"}
        text = short.get(self.kind)
        if text is None:
            return self.label
        return text + (f"@{self.pos}" if self.pos is not None else "")

    def __str__(self) -> str:
        return self.name


def _read(s: str, role: str | None) -> tuple[str | None, int | None, int | None, int | None] | None:
    if s in ("logits", "resid_final", "embed"):
        return ("embed" if s == "embed" else "logits"), None, None, None
    m = _SHORT.match(s)
    if m is not None:
        pos = int(m["pos"]) if m["pos"] is not None else None
        if m["hl"] is not None:
            return "head", int(m["hl"]), int(m["h"]), pos
        if m["fl"] is not None:
            return "feature", int(m["fl"]), int(m["f"]), pos
        if m["el"] is not None:
            return "error", int(m["el"]), None, pos
        return ("mlp", int(m["ml"]), None, pos) if m["ml"] is not None else ("attn", int(m["al"]), None, pos)
    m = _LONG.match(s)
    if m is None:
        return None
    head = int(m["head"]) if m["head"] is not None else None
    kind = m["kind"] or ("head" if role in ("sender", None) and head is not None else None)
    return kind, int(m["layer"]), head, (int(m["pos"]) if m["pos"] is not None else None)


def parse_node(text: "str | Node", role: str | None = None) -> Node:
    """Any spelling in the table above -> a Node; `role` ('sender', 'receiver', 'component' or
    None for any) limits the kinds. ValueError naming the text and the accepted forms.

    >>> parse_node("1.2@5", "sender")
    Node(kind='head', layer=1, head=2, pos=5)
    >>> parse_node("k:3.0", "receiver").label
    'k:3.0'
    """
    if isinstance(text, Node):
        return text
    kinds, forms = ROLES[role] if role is not None else (NODE_KINDS, "'L1H3', 'MLP2', 'q:1.3', 'resid:0@3', 'logits'")
    what = role or "node"
    if role == "component":
        s = str(text).strip()
    else:
        s = str(text).strip().replace(" ", "")
    read = _read(s, role)
    if read is None:
        if role == "component":
            raise ValueError(f"bad component {text!r}; write {forms}")
        raise ValueError(f"bad {what} {text!r}; write one of {forms}")
    kind, layer, head, pos = read
    if kind not in kinds:
        if role == "component":
            raise ValueError(f"bad component {text!r}; write {forms}")
        raise ValueError(f"bad {what} {text!r}: kind {kind!r} is not a {what} kind "
                         f"({', '.join(kinds)}); write one of {forms}")
    if kind not in LAYERLESS and (kind in INDEXED) != (head is not None):
        raise ValueError(f"bad {what} {text!r}: {kind} " + ("needs LAYER.HEAD" if kind in INDEXED else "takes a layer only")
                         + f"; write one of {forms}")
    if pos is not None and role == "receiver":
        raise ValueError(f"bad receiver {text!r}: receivers take no @POS; set receiver_positions instead")
    if pos is not None and role == "component":
        raise ValueError(f"bad component {text!r}: components take no @POS; write {forms}")
    return Node(kind, layer, head, pos)


def head_label(layer: int, head: int) -> str:
    """The short name of a head, 'L1H3' (tables and figures).

    >>> head_label(1, 3)
    'L1H3'
    """
    return Node("head", layer, head).name
