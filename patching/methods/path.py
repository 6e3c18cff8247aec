"""Path patching: a sender's effect that flows only through chosen receivers.

A **sender** is a head's output, an MLP's output or the residual stream (block input) of a
layer, at every position or at one (`head:1.2`, `head:1.2@5`, `mlp:0`, `resid:0@3`). A
**receiver** is what reads it: the query, key or value input of a head (`q:2.1`; on grouped-query
models `k:` / `v:` name key/value heads), an MLP (`mlp:2`), or the final residual stream, read
by the unembedding (`logits`). As in Wang et al. 2022 (IOI), two steps per sender:

1. run the base prompt with the sender set to the donor's value and every head frozen at its
   base value; read what each receiver sees there;
2. run the base prompt again with only the receivers' inputs replaced by what step 1 read;
   everything downstream of the receivers is recomputed. The metric is read here (for the
   `logits` receiver, step 1's logits are the answer).

Modes (named in the spec and the CSV):
- `heads_frozen`: other heads frozen, MLPs recomputed in step 1 (ARENA's IOI exercises): the
  sender's effect reaches the receivers directly and through MLPs.
- `direct`: heads and MLPs frozen in step 1: only the direct path, which is what TransformerLens'
  `get_act_patch_direct_path` computes (unlike it, k and v receivers work on grouped-query models).

Direction as everywhere: `denoise` (default) patches clean senders into the corrupt run, `noise`
corrupt senders into the clean run.

How it is fast: with every head frozen, step 1 has no attention at all, only the residual
stream's deviation from the base run plus (heads_frozen) the MLPs recomputed on it, position by
position, at the positions the receivers read. Step 2 resumes from the first receiver's layer,
at positions from the first one that can change, with cached keys/values before it. Rows of a
batch are (sender or receiver) x pair. One sender costs well under one forward pass.

>>> result = run_path(model, prompts, PathSpec(receivers=("q:3.0", "q:3.1")))    # doctest: +SKIP
>>> result.values.shape          # every sender head: [layer, head]                # doctest: +SKIP
torch.Size([4, 4])
>>> result.to_csv("path.csv")    # contract columns, then sender, receiver, mode   # doctest: +SKIP
"""
from __future__ import annotations

import itertools
import re
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable

import pandas as pd
import torch
from torch import Tensor

from metrics import Metric, MetricInputs, get_metric

from patching.model.memory_budget import memory_budget, placed_devices
from patching.model.loading import require_runner
from patching.core.prompts import PromptSet
from patching.core.provenance import recorded
from patching.core.results import PatchResult, write_csv
from patching.model.runner import RunCache, Runner
from patching.core.spec import DIRECTIONS

MODES = ("heads_frozen", "direct")
SWEEPS = ("senders", "receivers")
SENDER_KINDS = ("head", "mlp", "resid")
RECEIVER_KINDS = ("q", "k", "v", "mlp", "logits")
Progress = Callable[[int, int], None]

_NODE = re.compile(r"^(?:(?P<kind>[a-z]+):)?(?P<layer>\d+)(?:\.(?P<head>\d+))?(?:@(?P<pos>\d+))?$")


# -- nodes: senders and receivers ---------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    """One sender or receiver. kind: head / mlp / resid (senders), q / k / v / mlp / logits."""
    kind: str
    layer: int | None = None
    head: int | None = None        # query head; key/value head for k and v receivers
    pos: int | None = None         # senders only: None = every position

    @property
    def label(self) -> str:
        """The spec syntax: 'head:1.2@5', 'mlp:0', 'q:2.1', 'logits'."""
        if self.kind == "logits":
            return "logits"
        text = f"{self.kind}:{self.layer}" + (f".{self.head}" if self.head is not None else "")
        return text + (f"@{self.pos}" if self.pos is not None else "")


def parse_node(text: str, role: str) -> Node:
    """'head:1.2@5' / '1.2' (a head) / 'mlp:0' / 'resid:0@3' (senders); 'q:2.1' / 'mlp:2' /
    'logits' (receivers). ValueError naming the text and the accepted forms.

    >>> parse_node("1.2@5", "sender")
    Node(kind='head', layer=1, head=2, pos=5)
    >>> parse_node("k:3.0", "receiver").label
    'k:3.0'
    """
    forms = ("'head:L.H', 'L.H', 'head:L.H@POS', 'mlp:L', 'mlp:L@POS', 'resid:L@POS'" if role == "sender"
             else "'q:L.H', 'k:L.H', 'v:L.H', 'mlp:L', 'logits'")
    s = str(text).strip().replace(" ", "")
    if role == "receiver" and s in ("logits", "resid_final"):
        return Node("logits")
    m = _NODE.match(s)
    if m is None:
        raise ValueError(f"bad {role} {text!r}; write one of {forms}")
    kind = m["kind"] or ("head" if role == "sender" and m["head"] is not None else None)
    layer, head = int(m["layer"]), (int(m["head"]) if m["head"] is not None else None)
    pos = int(m["pos"]) if m["pos"] is not None else None
    allowed = SENDER_KINDS if role == "sender" else RECEIVER_KINDS
    if kind not in allowed:
        raise ValueError(f"bad {role} {text!r}: kind {kind!r} is not a {role} kind "
                         f"({', '.join(allowed)}); write one of {forms}")
    needs_head = kind in ("head", "q", "k", "v")
    if needs_head != (head is not None):
        raise ValueError(f"bad {role} {text!r}: {kind} " + ("needs LAYER.HEAD" if needs_head else "takes a layer only")
                         + f"; write one of {forms}")
    if pos is not None and role == "receiver":
        raise ValueError(f"bad receiver {text!r}: receivers take no @POS; set receiver_positions instead")
    return Node(kind, layer, head, pos)


# -- the spec -----------------------------------------------------------------------------------
def _positions(values, what: str) -> tuple[int, ...] | None:
    if values is None:
        return None
    out = tuple(sorted({int(v) for v in values}))
    if not out:
        raise ValueError(f"{what} is empty; leave it out to use every position")
    if out[0] < 0:
        raise ValueError(f"{what} must be >= 0, got {list(out)}")
    return out


@dataclass(frozen=True)
class PathSpec:
    """What to path-patch, as a frozen value that checks itself and round-trips through JSON.

    sweep="senders": each sender into the receiver set (all receivers patched together);
    senders=None means every head (layer x head, x pos with per_position).
    sweep="receivers": one sender through each receiver alone; receivers=None means every
    receiver downstream of it (q/k/v of later heads, MLPs, logits).
    Receivers default to ("logits",) in a senders sweep.

    >>> PathSpec(receivers=("q:3.0", "q:3.1"), mode="direct").to_dict()["kind"]
    'path'
    >>> PathSpec(senders=("mlp:0",), sweep="receivers").receivers is None
    True
    """
    receivers: tuple[str, ...] | None = None      # None: ("logits",) for a senders sweep
    senders: tuple[str, ...] | None = None
    sweep: str = "senders"
    mode: str = "heads_frozen"
    direction: str = "denoise"
    metric: str = "logit_diff"
    per_position: bool = False                    # every head x position as senders
    positions: tuple[int, ...] | None = None      # sender positions with per_position; None = all
    receiver_positions: tuple[int, ...] | None = None   # where receivers are patched; None = all
    model: str = "default"
    prepend_bos: bool = True

    kind = "path"          # class constant: PatchResult-compatible code reads spec.kind

    def __post_init__(self):
        if self.sweep not in SWEEPS:
            raise ValueError(f"sweep must be one of {', '.join(SWEEPS)}, not {self.sweep!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'denoise' or 'noise', not {self.direction!r}")
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"metric must be a metric name, not {self.metric!r}")
        for name, role in (("senders", "sender"), ("receivers", "receiver")):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str):
                value = [v for v in value.split(",") if v.strip()]
            nodes = [parse_node(v, role) for v in value]
            if not nodes:
                raise ValueError(f"{name} is empty; give at least one {role}")
            labels = tuple(dict.fromkeys(n.label for n in nodes))
            object.__setattr__(self, name, labels)
        if self.receivers is None and self.sweep == "senders":
            object.__setattr__(self, "receivers", ("logits",))
        if self.sweep == "receivers" and (self.senders is None or len(self.senders) != 1):
            raise ValueError(f"a receivers sweep follows one sender; got senders={self.senders!r}")
        if self.sweep == "senders" and self.receivers is not None and "logits" in self.receivers \
                and len(self.receivers) > 1:
            raise ValueError("the logits receiver reads the final residual stream, which already carries "
                             "every other receiver's effect; use it alone, not with "
                             f"{', '.join(r for r in self.receivers if r != 'logits')}")
        if self.per_position and self.senders is not None:
            raise ValueError("per_position applies to the every-head sweep (senders=None); "
                             "give explicit senders with @POS instead")
        if self.positions is not None and not self.per_position:
            raise ValueError("positions (sender positions) need per_position=True")
        object.__setattr__(self, "positions", _positions(self.positions, "positions"))
        object.__setattr__(self, "receiver_positions", _positions(self.receiver_positions, "receiver_positions"))

    @property
    def sender_nodes(self) -> tuple[Node, ...] | None:
        return None if self.senders is None else tuple(parse_node(s, "sender") for s in self.senders)

    @property
    def receiver_nodes(self) -> tuple[Node, ...] | None:
        return None if self.receivers is None else tuple(parse_node(r, "receiver") for r in self.receivers)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("receivers", "senders", "positions", "receiver_positions"):
            d[key] = list(d[key]) if d[key] is not None else None
        d["kind"] = "path"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PathSpec":
        d = dict(d)
        if d.pop("kind", "path") != "path":
            raise ValueError("not a path spec: kind must be 'path'")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown PathSpec fields {sorted(unknown)}; known: {sorted(known)}")
        for key in ("receivers", "senders", "positions", "receiver_positions"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


# -- the result ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PathResult(PatchResult):
    """A PatchResult whose spec is a PathSpec. Axes: ("layer", "head") or ("layer", "pos",
    "head") for the every-head sweep, ("sender",) for explicit senders, ("receiver",) for a
    receivers sweep. CSV rows: contract columns (kind=path; layer/pos/head of the sender), then
    sender, receiver, mode, receiver_layer, receiver_head."""
    sender_labels: tuple[str, ...] = ()       # explicit senders (axis "sender") or the one sender
    receiver_labels: tuple[str, ...] = ()     # the receiver set, or each receiver (axis "receiver")

    def _cells(self) -> list[dict]:
        """One dict per cell, in values' flattened order: sender node and receiver label."""
        out = []
        for idx in itertools.product(*[range(n) for n in self.values.shape]):
            at = {a: self.coords[a][i] for a, i in zip(self.axes, idx)}
            if "sender" in at:
                sender = parse_node(self.sender_labels[at["sender"]], "sender")
            elif "receiver" in at:
                sender = parse_node(self.sender_labels[0], "sender")
            else:
                sender = Node("head", at["layer"], at["head"], at.get("pos"))
            if "receiver" in at:
                receiver = self.receiver_labels[at["receiver"]]
            else:
                receiver = "+".join(self.receiver_labels)
            out.append({"sender": sender, "receiver": receiver})
        return out

    def to_dataframe(self) -> pd.DataFrame:
        spec: PathSpec = self.spec
        cells = self._cells()
        senders = [c["sender"] for c in cells]
        rnodes = [parse_node(c["receiver"], "receiver") if "+" not in c["receiver"] else None for c in cells]
        pos = [s.pos for s in senders]
        df = pd.DataFrame({
            "kind": "path", "direction": spec.direction, "metric": spec.metric,
            "layer": [s.layer for s in senders], "pos": pos, "head": [s.head for s in senders],
            "token": [self.str_tokens[p] if p is not None and p < len(self.str_tokens) else None for p in pos],
            "value": self.values.reshape(-1).tolist(),
            "normalized": self.normalized.reshape(-1).tolist(),
        })
        if self.n_pairs > 1:
            lo, hi = self.bootstrap_ci()
            df["stderr"] = self.stderr.reshape(-1).tolist()
            df["ci_low"] = lo.reshape(-1).tolist()
            df["ci_high"] = hi.reshape(-1).tolist()
        df["n_pairs"] = self.n_pairs
        df["sender"] = [s.label for s in senders]
        df["receiver"] = [c["receiver"] for c in cells]
        df["mode"] = spec.mode
        df["receiver_layer"] = [r.layer if r is not None else None for r in rnodes]
        df["receiver_head"] = [r.head if r is not None else None for r in rnodes]
        df = df[~df["value"].isna()].reset_index(drop=True)
        for col in ("layer", "pos", "head", "receiver_layer", "receiver_head"):
            df[col] = df[col].astype("Int64")
        return df

    def to_csv(self, path_or_buf=None) -> str | None:
        return write_csv(self.to_dataframe(), path_or_buf)

    def to_json(self) -> dict:
        d = super().to_json()
        d["sender_labels"], d["receiver_labels"] = list(self.sender_labels), list(self.receiver_labels)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "PathResult":
        per_pair = torch.tensor(d["per_pair"], dtype=torch.float64).reshape(d["shape"])
        return cls(PathSpec.from_dict(d["spec"]), tuple(d["axes"]),
                   {k: tuple(v) for k, v in d["coords"].items()}, per_pair,
                   torch.tensor(d["clean_baseline"], dtype=torch.float64),
                   torch.tensor(d["corrupt_baseline"], dtype=torch.float64),
                   tuple(d["str_tokens"]), d["metric_clean_is"], d["seconds"], d["model_name"],
                   tuple(d.get("sender_labels", ())), tuple(d.get("receiver_labels", ())),
                   provenance=d.get("provenance"))


# -- the computation ----------------------------------------------------------------------------
def _read_slot(node: Node, n_layers: int, parallel: bool) -> int:
    """Where in the residual stream a receiver reads: slot 2L = layer L's block input, 2L + 1 =
    after its attention, 2 * n_layers = the final stream."""
    if node.kind == "logits":
        return 2 * n_layers
    if node.kind == "mlp":
        return 2 * node.layer + (0 if parallel else 1)
    return 2 * node.layer


def _write_slot(node: Node) -> int:
    """Where a sender writes: a head after its layer's attention, an MLP after its block, resid
    at its block's input."""
    return {"head": 2 * node.layer + 1, "mlp": 2 * node.layer + 2, "resid": 2 * node.layer}[node.kind]


@dataclass
class _Plan:
    runner: Runner
    base: RunCache
    donor: RunCache
    mode: str
    receivers: list[Node]
    read_positions: Tensor      # [P] positions the receivers are patched at (sorted)
    n_layers: int
    parallel: bool

    @property
    def arch(self):
        return self.runner.arch

    def slot(self, node: Node) -> int:
        return _read_slot(node, self.n_layers, self.parallel)


def _sender_delta(plan: _Plan, s: Node, pair: Tensor, positions: Tensor) -> Tensor:
    """The sender's change to the residual stream at `positions`: [rows, P, d_model]."""
    b, d = plan.base.layers[s.layer], plan.donor.layers[s.layer]
    a = plan.arch
    if s.kind == "head":
        w_o = a.o_weight(s.layer).view(a.n_heads, a.d_head, a.d_model)[s.head]
        diff = (d.z[pair][:, positions, s.head] - b.z[pair][:, positions, s.head]) @ w_o
    elif s.kind == "mlp":
        diff = d.mlp_out[pair][:, positions] - b.mlp_out[pair][:, positions]
    else:
        diff = d.resid_pre[pair][:, positions] - b.resid_pre[pair][:, positions]
    if s.pos is not None:
        diff = diff * (positions == s.pos).to(diff.dtype)[None, :, None]
    return diff


def _mlp(arch, layer: int, x: Tensor) -> Tensor:
    return arch.mlp_out(layer, arch.mlp_act(layer, arch.mlp_pre(layer, arch.ln2(layer, x))))


def _capture(plan: _Plan, senders: list[Node], pair: Tensor, receivers: list[Node]) -> dict:
    """Step 1 for rows = senders (all writing at one slot) x pairs: what each receiver reads
    with the sender patched and every head frozen. Returns {receiver label: tensor} with
    resid [rows, P, d] for q/k/v, MLP output [rows, P, d] for mlp, logits [rows, vocab]."""
    a, base, P = plan.arch, plan.base, plan.read_positions
    n = len(senders)
    rows_pair = pair.repeat(n)                                     # index-major
    start = _write_slot(senders[0])
    deltas = torch.cat([_sender_delta(plan, s, pair, P) for s in senders])   # [rows, P, d]
    want = {r.label: plan.slot(r) for r in receivers}
    last = max(want.values())
    first = min(start, min(want.values()))
    dev = torch.zeros_like(deltas)        # deviation of the residual stream from the base run
    dev_pre = dev                         # deviation at the current layer's block input
    out = {}
    for slot in range(first, last + 1):
        layer, half = divmod(slot, 2)
        if slot == start:
            dev = dev + deltas
        if half == 0:
            dev_pre = dev
        for r in receivers:
            if want[r.label] != slot:
                continue
            if r.kind == "logits":
                final = base.layers[-1].resid_post[rows_pair][:, -1] + dev[:, -1]
                out[r.label] = a.unembed(a.ln_final(final))
                continue
            stream = base.layers[layer].resid_pre if half == 0 else base.layers[layer].resid_mid
            x = stream[rows_pair][:, P] + dev
            out[r.label] = _mlp(a, layer, x) if r.kind == "mlp" else x
        if half == 1 and slot < last and plan.mode == "heads_frozen":   # this layer's MLP, recomputed
            c = base.layers[layer]
            if plan.parallel:
                if slot - 1 >= first and dev_pre.abs().max() > 0:
                    x = c.resid_pre[rows_pair][:, P] + dev_pre
                    dev = dev + _mlp(a, layer, x) - c.mlp_out[rows_pair][:, P]
            else:
                x = c.resid_mid[rows_pair][:, P] + dev
                dev = dev + _mlp(a, layer, x) - c.mlp_out[rows_pair][:, P]
    return out


def _apply(plan: _Plan, rows_pair: Tensor, captured: dict, receivers: list[Node],
           active: Tensor | None, record: tuple[int, int] | None = None) -> tuple[Tensor, Tensor | None]:
    """Step 2: the base run with the receivers' inputs replaced by `captured` (rows aligned with
    rows_pair), in rows where `active` [rows, n_receivers] says so (all when None).
    Returns last-position logits [rows, vocab] and, when `record` = (layer, head) names a layer
    at or after the first receiver's, that head's pattern at destinations p0.. [rows, T - p0, T]."""
    runner, a, base = plan.runner, plan.arch, plan.base
    P = plan.read_positions
    p0 = int(P[0])
    at = P - p0
    layers = sorted({r.layer for r in receivers})
    lo, hi = layers[0], layers[-1]
    x = base.layers[lo].resid_pre[rows_pair][:, p0:]
    pattern = None

    def put(target: Tensor, value: Tensor, j: int, head: int | None):
        """target [rows, T - p0, ...] <- value [rows, P, ...] at the receiver positions."""
        sel = (slice(None), at) if head is None else (slice(None), at, head)
        new = target[sel]
        if active is not None:
            m = active[:, j].view(-1, *([1] * (new.dim() - 1)))
            value = torch.where(m, value, new)
        target = target.clone()
        target[sel] = value
        return target

    for layer in range(lo, hi + 1):
        mine = [(j, r) for j, r in enumerate(receivers) if r.layer == layer]
        q, k, v = a.qkv(layer, a.ln1(layer, x))
        heads_here = [(j, r) for j, r in mine if r.kind in ("q", "k", "v")]
        if heads_here:
            cq, ck, cv = a.qkv(layer, a.ln1(layer, captured[heads_here[0][1].label]))
            for j, r in heads_here:
                if r.kind == "q":
                    q = put(q, cq[:, :, r.head], j, r.head)
                elif r.kind == "k":
                    k = put(k, ck[:, :, r.head], j, r.head)
                else:
                    v = put(v, cv[:, :, r.head], j, r.head)
        q, k = runner._rope(base.rope, q, k, p0)
        if p0 > 0:
            k = torch.cat((base.layers[layer].k_rot[rows_pair, :p0], k), dim=1)
            v = torch.cat((base.layers[layer].v[rows_pair, :p0], v), dim=1)
        pat, z = runner.attend(layer, q, k, v, p0)
        if record is not None and record[0] == layer:
            pattern = pat[:, record[1]]
        attn_out = a.o_proj(layer, z)
        mid = x + attn_out
        mlp_out = _mlp(a, layer, x if plan.parallel else mid)
        for j, r in mine:
            if r.kind == "mlp":
                mlp_out = put(mlp_out, captured[r.label], j, None)
        x = mid + mlp_out
    if record is not None and record[0] > hi:
        resid = runner.resume_until(base, rows_pair, hi, "post", x, p0, until=record[0])
        pattern = runner.attention_pattern(base, rows_pair, record[0], resid, p0, torch.tensor([record[1]], device=resid.device))[:, 0]
    return runner.resume(base, rows_pair, hi, "post", x, p0), pattern


def _check_nodes(model, prompts: PromptSet, nodes, role: str):
    for n in nodes:
        if n.kind == "logits":
            continue
        if not 0 <= n.layer < model.n_layers:
            raise ValueError(f"{role} {n.label!r}: layer {n.layer} out of range; this model has layers "
                             f"0-{model.n_layers - 1}")
        if n.head is not None:
            size = model.n_kv_heads if n.kind in ("k", "v") else model.n_heads
            if not 0 <= n.head < size:
                what = "key/value heads" if n.kind in ("k", "v") else "heads"
                raise ValueError(f"{role} {n.label!r}: head {n.head} out of range; this model has {what} "
                                 f"0-{size - 1}")
        if n.pos is not None and not 0 <= n.pos < prompts.n_pos:
            raise ValueError(f"{role} {n.label!r}: position {n.pos} out of range; this prompt has positions "
                             f"0-{prompts.n_pos - 1}")


def all_receivers(model, after: Node | None = None) -> list[Node]:
    """Every receiver (q/k/v of each head, each MLP, logits), optionally only those downstream
    of a sender.

    >>> [r.label for r in all_receivers(model)][:3]       # doctest: +SKIP
    ['q:0.0', 'q:0.1', 'q:0.2']
    """
    parallel = model.parallel_attn_mlp
    out = []
    for layer in range(model.n_layers):
        for kind, size in (("q", model.n_heads), ("k", model.n_kv_heads), ("v", model.n_kv_heads)):
            out += [Node(kind, layer, h) for h in range(size)]
        out.append(Node("mlp", layer))
    out.append(Node("logits"))
    if after is not None:
        start = _write_slot(after)
        out = [r for r in out if _read_slot(r, model.n_layers, parallel) >= start]
    return out


def _memory_per_row(model, n_pos: int) -> int:
    a = model.arch
    floats = n_pos * (10 * a.d_model + 3 * a.d_mlp + 2 * a.n_heads * n_pos + 4 * a.n_kv_heads * a.d_head)
    return 4 * floats + 4 * model.cfg.d_vocab


@recorded
def run_path(model, prompts: PromptSet, spec: PathSpec, *, metric: Metric | Callable | str | None = None,
             on_progress: Progress | None = None, max_memory_mb: float | None = None) -> PathResult:
    """Path patching as `spec` says; see the module doc. Cells with no path (a sender at or after
    every receiver) are NaN and left out of the CSV.

    >>> run_path(model, prompts, PathSpec(senders=("head:0.1",), sweep="receivers")).axes   # doctest: +SKIP
    ('receiver',)
    """
    start_time = time.perf_counter()
    require_runner(model, "path patching")
    metric = get_metric(metric if metric is not None else spec.metric)
    runner = model.runner
    n_layers, parallel = model.n_layers, model.parallel_attn_mlp
    device = prompts.clean_tokens.device

    # senders and receivers, validated
    if spec.senders is None:
        positions = spec.positions if spec.positions is not None else tuple(range(prompts.n_pos))
        if spec.per_position:
            senders = [Node("head", l, h, p) for l in range(n_layers) for p in positions for h in range(model.n_heads)]
            axes = ("layer", "pos", "head")
            coords = {"layer": tuple(range(n_layers)), "pos": positions, "head": tuple(range(model.n_heads))}
        else:
            senders = [Node("head", l, h) for l in range(n_layers) for h in range(model.n_heads)]
            axes, coords = ("layer", "head"), {"layer": tuple(range(n_layers)), "head": tuple(range(model.n_heads))}
    else:
        senders = list(spec.sender_nodes)
        axes, coords = ("sender",), {"sender": tuple(range(len(senders)))}
    _check_nodes(model, prompts, senders, "sender")
    if spec.positions is not None and spec.positions[-1] >= prompts.n_pos:
        raise ValueError(f"positions {list(spec.positions)} out of range; this prompt has positions "
                         f"0-{prompts.n_pos - 1}")
    if spec.sweep == "receivers":
        receivers = list(spec.receiver_nodes) if spec.receivers is not None else all_receivers(model, senders[0])
        axes, coords = ("receiver",), {"receiver": tuple(range(len(receivers)))}
    else:
        receivers = list(spec.receiver_nodes)
    _check_nodes(model, prompts, receivers, "receiver")
    rpos = spec.receiver_positions
    if rpos is not None and rpos[-1] >= prompts.n_pos:
        raise ValueError(f"receiver_positions {list(rpos)} out of range; this prompt has positions "
                         f"0-{prompts.n_pos - 1}")

    # the two runs
    clean, corrupt = runner.run(prompts.clean_tokens), runner.run(prompts.corrupt_tokens)
    base, donor = (corrupt, clean) if spec.direction == "denoise" else (clean, corrupt)
    n_pairs = prompts.n_pairs
    clean_logprobs = clean.logits.float().log_softmax(-1)

    def measure(logits: Tensor, pair: Tensor) -> Tensor:
        inputs = MetricInputs(prompts.answer_ids[pair], prompts.wrong_ids[pair], clean_logprobs[pair])
        return metric(logits.float(), inputs).double().cpu()

    all_pairs = torch.arange(n_pairs, device=device)
    clean_base, corrupt_base = measure(clean.logits, all_pairs), measure(corrupt.logits, all_pairs)

    def plan_for(rs: list[Node], sender_pos: int | None) -> _Plan:
        """Receiver positions: the last position for logits; from the sender's position on."""
        if all(r.kind == "logits" for r in rs):
            pos = [prompts.n_pos - 1]
        else:
            pos = list(rpos) if rpos is not None else list(range(prompts.n_pos))
            if any(r.kind == "logits" for r in rs) and prompts.n_pos - 1 not in pos:
                pos.append(prompts.n_pos - 1)
        lo = sender_pos or 0
        pos = sorted(p for p in pos if p >= lo) or [prompts.n_pos - 1]
        return _Plan(runner, base, donor, spec.mode, rs, torch.tensor(pos, device=device), n_layers, parallel)

    per_pair = torch.full((*[len(coords[a]) for a in axes], n_pairs), float("nan"), dtype=torch.float64)
    flat = per_pair.view(-1, n_pairs)
    budget = memory_budget(prompts.clean_tokens.device, max_memory_mb or None,   # the devices' free memory
                           also=placed_devices(getattr(model, "device_map", None)))
    chunk = max(1, int(budget // _memory_per_row(model, prompts.n_pos)) // n_pairs)
    done, last_report = 0, 0.0

    def report(total):
        nonlocal last_report
        now = time.perf_counter()
        if on_progress is not None and (now - last_report > 0.1 or done == total):
            on_progress(done, total)
            last_report = now

    with torch.inference_mode():
        if spec.sweep == "senders":
            reach = max(_read_slot(r, n_layers, parallel) for r in receivers)
            live = [(i, s) for i, s in enumerate(senders) if _write_slot(s) <= reach]
            groups: dict[tuple, list] = {}
            for i, s in live:
                groups.setdefault((_write_slot(s), s.pos), []).append((i, s))
            total = len(live)
            for (_, pos), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or -1)):
                plan = plan_for(receivers, pos)
                for lo in range(0, len(members), chunk):
                    part = members[lo:lo + chunk]
                    nodes = [s for _, s in part]
                    captured = _capture(plan, nodes, all_pairs, receivers)
                    rows_pair = all_pairs.repeat(len(part))
                    if receivers[0].kind == "logits":
                        logits = captured["logits"]
                    else:
                        logits = _apply(plan, rows_pair, captured, receivers, None)[0]
                    values = measure(logits, rows_pair).view(len(part), n_pairs)
                    for (i, _), v in zip(part, values):
                        flat[i] = v
                    done += len(part)
                    report(total)
        else:
            sender = senders[0]
            live = [(j, r) for j, r in enumerate(receivers)
                    if _read_slot(r, n_layers, parallel) >= _write_slot(sender)]
            total = len(live)
            plan = plan_for([r for _, r in live], sender.pos) if live else None
            captured = _capture(plan, [sender], all_pairs, [r for _, r in live]) if live else {}
            by_layer: dict[int, list] = {}
            for j, r in live:
                if r.kind == "logits":
                    flat[j] = measure(captured["logits"], all_pairs)
                    done += 1
                else:
                    by_layer.setdefault(r.layer, []).append((j, r))
            report(total)
            for layer, members in sorted(by_layer.items()):
                for lo in range(0, len(members), chunk):
                    part = members[lo:lo + chunk]
                    rs = [r for _, r in part]
                    rows_pair = all_pairs.repeat(len(part))
                    active = torch.eye(len(part), dtype=torch.bool, device=device).repeat_interleave(n_pairs, 0)
                    cap = {r.label: captured[r.label][rows_pair] for r in rs}
                    logits = _apply(plan, rows_pair, cap, rs, active)[0]
                    values = measure(logits, rows_pair).view(len(part), n_pairs)
                    for (j, _), v in zip(part, values):
                        flat[j] = v
                    done += len(part)
                    report(total)
    if on_progress is not None and done == 0:
        on_progress(0, 0)
    return PathResult(spec, axes, coords, per_pair, clean_base, corrupt_base, prompts.str_tokens,
                      metric.clean_is, time.perf_counter() - start_time, model.name,
                      sender_labels=tuple(s.label for s in senders) if spec.senders is not None else (),
                      receiver_labels=tuple(r.label for r in receivers))


@torch.inference_mode()
def path_patched_pattern(model, prompts: PromptSet, spec: PathSpec, index: dict, layer: int, head: int,
                         pair: int = 0) -> tuple[Tensor, Tensor, str]:
    """Head (layer, head)'s attention pattern in step 2 of one cell of a path-patching run.

    index names the cell by the result's axes: {"layer", "head"} (every-head sweep, + "pos"
    with per_position), {"sender": i} (explicit senders) or {"receiver": j} (receivers sweep).
    Returns (pattern in the base run [dest, src], pattern in the patched run, label). Heads
    before the first receiver's layer, and every head when the receiver is the logits, keep
    the base run's pattern.

    >>> base, patched, label = path_patched_pattern(model, prompts, PathSpec(receivers=("q:3.0",)),
    ...                                             {"layer": 1, "head": 2}, layer=3, head=0)  # doctest: +SKIP
    """
    require_runner(model, "path patching")
    if spec.sweep == "receivers" or spec.senders is not None:
        key = "receiver" if spec.sweep == "receivers" else "sender"
        if set(index) != {key}:
            raise ValueError(f"index {index!r} does not fit this path result: it needs exactly {key}")
    elif set(index) != ({"layer", "pos", "head"} if spec.per_position else {"layer", "head"}):
        raise ValueError(f"index {index!r} does not fit this path result: it needs exactly layer, "
                         + ("pos, head" if spec.per_position else "head"))
    if spec.sweep == "receivers":
        sender = spec.sender_nodes[0]
        options = list(spec.receiver_nodes) if spec.receivers is not None else all_receivers(model, sender)
        if not 0 <= int(index["receiver"]) < len(options):
            raise ValueError(f"receiver {index['receiver']} out of range; this run has receivers 0-{len(options) - 1}")
        receivers = [options[int(index["receiver"])]]
    else:
        receivers = list(spec.receiver_nodes)
        if spec.senders is not None:
            if not 0 <= int(index["sender"]) < len(spec.senders):
                raise ValueError(f"sender {index['sender']} out of range; this run has senders "
                                 f"0-{len(spec.senders) - 1}")
            sender = spec.sender_nodes[int(index["sender"])]
        else:
            sender = Node("head", int(index["layer"]), int(index["head"]),
                          int(index["pos"]) if spec.per_position else None)
    _check_nodes(model, prompts, [sender], "sender")
    _check_nodes(model, prompts, receivers, "receiver")
    runner = model.runner
    clean = runner.run(prompts.clean_tokens[pair:pair + 1])
    corrupt = runner.run(prompts.corrupt_tokens[pair:pair + 1])
    base, donor = (corrupt, clean) if spec.direction == "denoise" else (clean, corrupt)
    base_pattern = base.layers[layer].pattern[0, head]
    label = (f"path {sender.label} -> {'+'.join(r.label for r in receivers)} ({spec.mode}, {spec.direction})")
    parallel = model.parallel_attn_mlp
    reach = max(_read_slot(r, model.n_layers, parallel) for r in receivers)
    if receivers[0].kind == "logits" or _write_slot(sender) > reach or layer < min(r.layer for r in receivers):
        return base_pattern, base_pattern.clone(), label + " (does not reach this head's pattern)"
    rpos = spec.receiver_positions
    pos = list(rpos) if rpos is not None else list(range(prompts.n_pos))
    pos = sorted(p for p in pos if p >= (sender.pos or 0)) or [prompts.n_pos - 1]
    plan = _Plan(runner, base, donor, spec.mode, receivers, torch.tensor(pos, device=prompts.clean_tokens.device),
                 model.n_layers, parallel)
    pairs = torch.zeros(1, dtype=torch.long, device=prompts.clean_tokens.device)
    captured = _capture(plan, [sender], pairs, receivers)
    _, pattern = _apply(plan, pairs, captured, receivers, None, record=(layer, head))
    patched = base_pattern.clone()
    patched[int(plan.read_positions[0]):] = pattern[0]
    return base_pattern, patched, label
