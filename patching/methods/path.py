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
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable

import pandas as pd
import torch
from torch import Tensor

from metrics import Metric, get_metric

from patching.model.memory_budget import memory_budget, placed_devices
from patching.model.loading import require_runner
from patching.core.nodes import ROLES, Node, parse_node
from patching.core.prompts import PromptSet
from patching.core.provenance import recorded
from patching.core.results import PatchResult, write_csv
from patching.model.runner import Edit, Runner
from patching.methods.pair import CachedPair
from patching.methods.share import Share
from patching.core.spec import check_direction

MODES = ("heads_frozen", "direct")
SWEEPS = ("senders", "receivers")
SENDER_KINDS = ROLES["sender"][0]
RECEIVER_KINDS = ROLES["receiver"][0]
Progress = Callable[[int, int], None]


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
        check_direction(self.direction)
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
        df = self.contract_frame([s.layer for s in senders], [s.pos for s in senders], [s.head for s in senders])
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
        return cls(PathSpec.from_dict(d["spec"]), *PatchResult.json_fields(d),
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


@dataclass(frozen=True)
class _Plan:
    """One step-1/step-2 setting: the cached pair, the mode, the receivers and where they read."""
    runner: Runner
    pair: CachedPair
    mode: str
    receivers: tuple[Node, ...]
    read_positions: Tensor      # [P] positions the receivers are patched at (sorted)
    n_layers: int
    parallel: bool

    @property
    def arch(self):
        return self.runner.arch

    def slot(self, node: Node) -> int:
        return _read_slot(node, self.n_layers, self.parallel)


def _plan_for(model, pair: CachedPair, spec: "PathSpec", receivers, sender_pos: int | None) -> _Plan:
    """Receiver positions: the last position for logits; from the sender's position on."""
    n_pos = pair.prompts.n_pos
    rpos = spec.receiver_positions
    if all(r.kind == "logits" for r in receivers):
        pos = [n_pos - 1]
    else:
        pos = list(rpos) if rpos is not None else list(range(n_pos))
        if any(r.kind == "logits" for r in receivers) and n_pos - 1 not in pos:
            pos.append(n_pos - 1)
    lo = sender_pos or 0
    pos = sorted(p for p in pos if p >= lo) or [n_pos - 1]
    return _Plan(model.runner, pair, spec.mode, tuple(receivers), torch.tensor(pos, device=pair.pairs.device),
                 model.n_layers, model.parallel_attn_mlp)


def _sender_delta(plan: _Plan, s: Node, pair: Tensor, positions: Tensor) -> Tensor:
    """The sender's change to the residual stream at `positions`: [rows, P, d_model]."""
    b, d = plan.pair.base.layers[s.layer], plan.pair.donor.layers[s.layer]
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
    a, base, P = plan.arch, plan.pair.base, plan.read_positions
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


class _ReceiverEdit(Edit):
    """Step 2 as an edit of the base run: at the receivers' layers, their q / k / v inputs
    (from captured resid [rows, P, d]) and MLP outputs (captured [rows, P, d]) replace the base
    run's at the receiver positions, in rows where `active` [rows, n_receivers] says so (all when
    None); `record` = (layer, head) keeps that head's pattern [rows, T - p0, T]."""

    def __init__(self, plan: _Plan, captured: dict, receivers: list[Node], active: Tensor | None,
                 record: tuple[int, int] | None = None):
        self.arch, self.captured, self.active, self.record = plan.arch, captured, active, record
        self.p0 = int(plan.read_positions[0])
        self.at = plan.read_positions - self.p0                     # [P] into positions p0..
        self.by_layer: dict[int, list[tuple[int, Node]]] = {}
        for j, r in enumerate(receivers):
            self.by_layer.setdefault(r.layer, []).append((j, r))
        self.lo, self.hi = min(self.by_layer), max(self.by_layer)
        self.pattern: Tensor | None = None

    def touches(self, layer: int) -> bool:
        return self.lo <= layer <= self.hi

    def _put(self, target: Tensor, value: Tensor, j: int, head: int | None) -> Tensor:
        """target [rows, T - p0, ...] <- value [rows, P, ...] at the receiver positions."""
        sel = (slice(None), self.at) if head is None else (slice(None), self.at, head)
        new = target[sel]
        if self.active is not None:
            m = self.active[:, j].view(-1, *([1] * (new.dim() - 1)))
            value = torch.where(m, value, new)
        target = target.clone()
        target[sel] = value
        return target

    def qkv(self, layer, q, k, v):
        heads = [(j, r) for j, r in self.by_layer.get(layer, ()) if r.kind in ("q", "k", "v")]
        if heads:
            a = self.arch
            cq, ck, cv = a.qkv(layer, a.ln1(layer, self.captured[heads[0][1].label]))
            for j, r in heads:
                if r.kind == "q":
                    q = self._put(q, cq[:, :, r.head], j, r.head)
                elif r.kind == "k":
                    k = self._put(k, ck[:, :, r.head], j, r.head)
                else:
                    v = self._put(v, cv[:, :, r.head], j, r.head)
        return q, k, v

    def z(self, layer, pattern, z):
        if self.record is not None and self.record[0] == layer:
            self.pattern = pattern[:, self.record[1]]
        return z

    def mlp_out(self, layer, out):
        for j, r in self.by_layer.get(layer, ()):
            if r.kind == "mlp":
                out = self._put(out, self.captured[r.label], j, None)
        return out


def _apply(plan: _Plan, rows_pair: Tensor, captured: dict, receivers: list[Node],
           active: Tensor | None) -> Tensor:
    """Step 2: the base run with the receivers' inputs replaced by `captured` (rows aligned with
    rows_pair), resumed from the first receiver's layer at positions p0..; last-position logits
    [rows, vocab]."""
    edit = _ReceiverEdit(plan, captured, receivers, active)
    x = plan.pair.base.layers[edit.lo].resid_pre[rows_pair][:, edit.p0:]
    return plan.runner.forward(x, src=plan.pair.base, rows=rows_pair, layer=edit.lo, p0=edit.p0, edit=edit)


def _apply_pattern(plan: _Plan, rows_pair: Tensor, captured: dict, receivers: list[Node],
                   record: tuple[int, int]) -> Tensor:
    """Step 2 up to layer record[0]: head record[1]'s pattern there [rows, T - p0, T]."""
    edit = _ReceiverEdit(plan, captured, receivers, None, record)
    x = plan.pair.base.layers[edit.lo].resid_pre[rows_pair][:, edit.p0:]
    plan.runner.forward(x, src=plan.pair.base, rows=rows_pair, layer=edit.lo, p0=edit.p0, edit=edit,
                        until=record[0] + 1)
    return edit.pattern


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


@dataclass
class _Progress:
    """Progress reports at most every 0.1 s (and at the end); `done` counts finished cells."""
    on_progress: Progress | None
    total: int = 0
    done: int = 0
    last: float = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.on_progress is not None and (now - self.last > 0.1 or self.done == self.total):
            self.on_progress(self.done, self.total)
            self.last = now


def _check_positions(prompts: PromptSet, positions: tuple[int, ...] | None, name: str) -> None:
    if positions is not None and positions[-1] >= prompts.n_pos:
        raise ValueError(f"{name} {list(positions)} out of range; this prompt has positions 0-{prompts.n_pos - 1}")


def path_nodes(model, prompts: PromptSet, spec: PathSpec):
    """The run's senders and receivers (validated against the model and prompts) and the
    result's axes and coordinates.

    >>> senders, receivers, axes, coords = path_nodes(model, prompts, PathSpec())
    >>> axes
    ('layer', 'head')
    """
    n_layers = model.n_layers
    if spec.senders is None:
        positions = spec.positions if spec.positions is not None else tuple(range(prompts.n_pos))
        heads = tuple(range(model.n_heads))
        if spec.per_position:
            senders = [Node("head", l, h, p) for l in range(n_layers) for p in positions for h in heads]
            axes, coords = ("layer", "pos", "head"), {"layer": tuple(range(n_layers)), "pos": positions, "head": heads}
        else:
            senders = [Node("head", l, h) for l in range(n_layers) for h in heads]
            axes, coords = ("layer", "head"), {"layer": tuple(range(n_layers)), "head": heads}
    else:
        senders = list(spec.sender_nodes)
        axes, coords = ("sender",), {"sender": tuple(range(len(senders)))}
    _check_nodes(model, prompts, senders, "sender")
    _check_positions(prompts, spec.positions, "positions")
    if spec.sweep == "receivers":
        receivers = list(spec.receiver_nodes) if spec.receivers is not None else all_receivers(model, senders[0])
        axes, coords = ("receiver",), {"receiver": tuple(range(len(receivers)))}
    else:
        receivers = list(spec.receiver_nodes)
    _check_nodes(model, prompts, receivers, "receiver")
    _check_positions(prompts, spec.receiver_positions, "receiver_positions")
    return senders, receivers, axes, coords


def _sweep_senders(model, pair: CachedPair, spec: PathSpec, senders, receivers, flat: Tensor,
                   chunk: int, progress: _Progress, share: Share | None = None,
                   written: Tensor | None = None) -> None:
    """Each sender into the whole receiver set; flat [senders, n_pairs] gets the values. Batches:
    senders of one (write slot, position) group, `chunk` at a time; with `share`, only its batches
    (`written` [senders] marks what was set; shard 0 also the senders with no path, left NaN)."""
    n_layers, parallel, n_pairs = model.n_layers, model.parallel_attn_mlp, pair.n_pairs
    reach = max(_read_slot(r, n_layers, parallel) for r in receivers)
    live = [(i, s) for i, s in enumerate(senders) if _write_slot(s) <= reach]
    groups: dict[tuple, list] = {}
    for i, s in live:
        groups.setdefault((_write_slot(s), s.pos), []).append((i, s))
    batches = [(pos, members[lo:lo + chunk])
               for (_, pos), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or -1))
               for lo in range(0, len(members), chunk)]
    if share is not None:                         # step 2 resumes at the receivers' layer: cost ~ senders
        batches = [batches[b] for b in share.mine([len(part) for _, part in batches])]
        _mark_unlisted(written, [i for i, _ in live], share)
    progress.total = sum(len(part) for _, part in batches)
    plan, plan_pos = None, object()
    for pos, part in batches:
        if pos != plan_pos:                        # one plan per group (batches come group by group)
            plan, plan_pos = _plan_for(model, pair, spec, receivers, pos), pos
        captured = _capture(plan, [s for _, s in part], pair.pairs, receivers)
        rows_pair = pair.pairs.repeat(len(part))
        if receivers[0].kind == "logits":
            logits = captured["logits"]
        else:
            logits = _apply(plan, rows_pair, captured, receivers, None)
        for (i, _), v in zip(part, pair.measure(logits, rows_pair).view(len(part), n_pairs)):
            flat[i] = v
            if written is not None:
                written[i] = True
        progress.advance(len(part))


def _mark_unlisted(written: Tensor | None, live: list[int], share: Share) -> None:
    """Shard 0 owns the cells no batch computes (NaN: no path from that sender / to that receiver)."""
    if written is not None and share.fills:
        written[:] = True
        written[live] = False


def _sweep_receivers(model, pair: CachedPair, spec: PathSpec, sender: Node, receivers, flat: Tensor,
                     chunk: int, progress: _Progress, share: Share | None = None,
                     written: Tensor | None = None) -> None:
    """One sender through each receiver alone; flat [receivers, n_pairs] gets the values. Batches:
    receivers of one layer, `chunk` at a time (cost: rows x layers resumed); the logits receiver is
    read from step 1 (shard 0's, with `share`)."""
    n_pairs, start = pair.n_pairs, _write_slot(sender)
    live = [(j, r) for j, r in enumerate(receivers)
            if _read_slot(r, model.n_layers, model.parallel_attn_mlp) >= start]
    by_layer: dict[int, list] = {}
    for j, r in live:
        if r.kind != "logits":
            by_layer.setdefault(r.layer, []).append((j, r))
    batches = [members[lo:lo + chunk] for layer, members in sorted(by_layer.items())
               for lo in range(0, len(members), chunk)]
    heads = [(j, r) for j, r in live if r.kind == "logits"]
    if share is not None:
        batches = [batches[b] for b in share.mine([len(p) * (model.n_layers - p[0][1].layer) for p in batches])]
        heads = heads if share.fills else []
        _mark_unlisted(written, [j for j, _ in live], share)
    progress.total = len(heads) + sum(len(p) for p in batches)
    plan = _plan_for(model, pair, spec, [r for _, r in live], sender.pos) if live else None
    captured = _capture(plan, [sender], pair.pairs, [r for _, r in live]) if live else {}
    for j, r in heads:
        flat[j] = pair.measure(captured["logits"], pair.pairs)
        progress.done += 1
    progress.advance(0)
    for part in batches:
        rs = [r for _, r in part]
        rows_pair = pair.pairs.repeat(len(part))
        active = torch.eye(len(part), dtype=torch.bool, device=rows_pair.device).repeat_interleave(n_pairs, 0)
        logits = _apply(plan, rows_pair, {r.label: captured[r.label][rows_pair] for r in rs}, rs, active)
        for (j, _), v in zip(part, pair.measure(logits, rows_pair).view(len(part), n_pairs)):
            flat[j] = v
        progress.advance(len(part))
    if written is not None:
        for j, _ in heads + [m for p in batches for m in p]:
            written[j] = True


@recorded
def run_path(model, prompts: PromptSet, spec: PathSpec, *, metric: Metric | Callable | str | None = None,
             on_progress: Progress | None = None, max_memory_mb: float | None = None) -> PathResult:
    """Path patching as `spec` says; see the module doc. Cells with no path (a sender at or after
    every receiver) are NaN and left out of the CSV.

    >>> run_path(model, prompts, PathSpec(senders=("head:0.1",), sweep="receivers")).axes   # doctest: +SKIP
    ('receiver',)
    """
    return path_share(model, prompts, spec, None, metric=metric, on_progress=on_progress,
                      max_memory_mb=max_memory_mb)[0]


def path_share(model, prompts: PromptSet, spec: PathSpec, share: Share | None, *,
               metric: Metric | Callable | str | None = None, on_progress: Progress | None = None,
               max_memory_mb: float | None = None) -> tuple[PathResult, Tensor | None]:
    """(result, written): `run_path`, or with `share` only that shard's batches (the rest NaN) and
    `written` [*cells, pairs] (bool) marking the values it set; no provenance (the caller's).

    >>> r, w = path_share(model, prompts, PathSpec(), Share(0, 2), max_memory_mb=0.05)
    >>> bool(w.any()), bool(w.all())
    (True, False)
    """
    start_time = time.perf_counter()
    require_runner(model, "path patching")
    metric = get_metric(metric if metric is not None else spec.metric)
    senders, receivers, axes, coords = path_nodes(model, prompts, spec)
    pair = CachedPair.run(model.runner, prompts, metric, spec.direction)
    n_pairs = prompts.n_pairs
    per_pair = torch.full((*[len(coords[a]) for a in axes], n_pairs), float("nan"), dtype=torch.float64)
    written = None if share is None else torch.zeros(per_pair.shape[:-1], dtype=torch.bool)
    budget = memory_budget(prompts.clean_tokens.device, max_memory_mb or None,   # the devices' free memory
                           also=placed_devices(getattr(model, "device_map", None)))
    chunk = max(1, int(budget // _memory_per_row(model, prompts.n_pos)) // n_pairs)
    progress = _Progress(on_progress)
    flat_written = None if written is None else written.view(-1)
    with torch.inference_mode():
        if spec.sweep == "senders":
            _sweep_senders(model, pair, spec, senders, receivers, per_pair.view(-1, n_pairs), chunk, progress,
                           share, flat_written)
        else:
            _sweep_receivers(model, pair, spec, senders[0], receivers, per_pair.view(-1, n_pairs), chunk,
                             progress, share, flat_written)
    if on_progress is not None and progress.done == 0:
        on_progress(0, 0)
    result = PathResult(spec, axes, coords, per_pair, pair.clean_baseline, pair.corrupt_baseline, prompts.str_tokens,
                        metric.clean_is, time.perf_counter() - start_time, model.name,
                        sender_labels=tuple(s.label for s in senders) if spec.senders is not None else (),
                        receiver_labels=tuple(r.label for r in receivers))
    if written is not None:
        written = written[..., None].expand(per_pair.shape).clone()
    return result, written


def _cell_nodes(model, spec: PathSpec, index: dict) -> tuple[Node, list[Node]]:
    """The sender and receivers of one cell of a path result, named by the result's axes."""
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
        return sender, [options[int(index["receiver"])]]
    if spec.senders is not None:
        if not 0 <= int(index["sender"]) < len(spec.senders):
            raise ValueError(f"sender {index['sender']} out of range; this run has senders "
                             f"0-{len(spec.senders) - 1}")
        return spec.sender_nodes[int(index["sender"])], list(spec.receiver_nodes)
    return (Node("head", int(index["layer"]), int(index["head"]), int(index["pos"]) if spec.per_position else None),
            list(spec.receiver_nodes))


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
    sender, receivers = _cell_nodes(model, spec, index)
    _check_nodes(model, prompts, [sender], "sender")
    _check_nodes(model, prompts, receivers, "receiver")
    runs = CachedPair.run(model.runner, prompts.subset([pair]), None, spec.direction)
    base_pattern = runs.base.layers[layer].pattern[0, head]
    label = (f"path {sender.label} -> {'+'.join(r.label for r in receivers)} ({spec.mode}, {spec.direction})")
    reach = max(_read_slot(r, model.n_layers, model.parallel_attn_mlp) for r in receivers)
    if receivers[0].kind == "logits" or _write_slot(sender) > reach or layer < min(r.layer for r in receivers):
        return base_pattern, base_pattern.clone(), label + " (does not reach this head's pattern)"
    plan = _plan_for(model, runs, spec, receivers, sender.pos)
    captured = _capture(plan, [sender], runs.pairs, receivers)
    pattern = _apply_pattern(plan, runs.pairs, captured, receivers, record=(layer, head))
    patched = base_pattern.clone()
    patched[int(plan.read_positions[0]):] = pattern[0]
    return base_pattern, patched, label
