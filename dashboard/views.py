"""Pure views the result tabs share: the value mode a result can show, the cell a click names, and
the counterfactual attention of a clicked head (Results and Path tabs), with its CSV.

Nothing here imports Dash.

>>> clicked_cell({"points": [{"x": "H2", "y": "L1"}]})
{'layer': 1, 'pos': None, 'head': 2}
"""
from __future__ import annotations


import re
from dataclasses import dataclass, replace


from patching.core.prompts import PromptPair, PromptSet
from patching.core.results import PatchResult
from patching.kinds import KINDS

from dashboard.forms import check_model


def effective_mode(result: PatchResult, mode: str) -> tuple[str, str | None]:
    """'normalized' needs clean != corrupt; otherwise fall back to raw and say why."""
    if result.display_mode(mode) != mode:
        return "raw", ("normalized values are undefined: the clean and corrupt baselines are equal; "
                       "showing raw values")
    return mode, None


def clicked_cell(click_data: dict | None) -> dict | None:
    """plotly clickData on a results heatmap -> {'layer', 'pos', 'head'} (None where n/a).

    Reads the cell's customdata when plotly sends it, else the axis labels the figures write
    ('L1.H2' or 'L1' rows; '10: ...' position or 'H2' head columns).

    >>> clicked_cell({"points": [{"x": "10: ' John'", "y": "L1.H2"}]})
    {'layer': 1, 'pos': 10, 'head': 2}
    """
    if not click_data or not click_data.get("points"):
        return None
    point = click_data["points"][0]
    cd = point.get("customdata")
    if isinstance(cd, (list, tuple)) and len(cd) >= 3 and not isinstance(cd[0], (list, tuple)):
        return {"layer": cd[0], "pos": cd[1], "head": cd[2]}
    row = re.match(r"^L(\d+)(?:\.H(\d+))?$", str(point.get("y", "")))
    if row is None:
        return None
    cell = {"layer": int(row.group(1)), "pos": None, "head": int(row.group(2)) if row.group(2) else None}
    x = str(point.get("x", ""))
    if (m := re.match(r"^H(\d+)$", x)) is not None:
        cell["head"] = int(m.group(1))
    elif (m := re.match(r"^(\d+):", x)) is not None:
        cell["pos"] = int(m.group(1))
    return cell


def stored_prompts(registry, run) -> tuple:
    """(Model, PromptSet) of a stored run: its model (offered ones only: a stored name never loads
    an arbitrary path) and its pairs, BOS as the run had it."""
    spec = run.result.spec
    model = registry.get(check_model(registry, spec.model))
    return model, PromptSet.from_pairs(model, [PromptPair(*p) for p in run.pairs], prepend_bos=spec.prepend_bos)


@dataclass(frozen=True)
class AttentionView:
    clean: object                 # [dest, src]
    corrupt: object
    patched: object | None
    str_tokens: list[str]         # the clean prompt's tokens
    title: str
    note: str | None
    frame: object | None = None   # a DataFrame for CSV download, when available
    corrupt_tokens: list[str] | None = None    # the corrupt prompt's (None: as clean)
    patched_tokens: list[str] | None = None    # the patched run's prompt (None: as corrupt)
    receivers: tuple = ()         # (layer, head, change) of the heads a sender's patch moved, largest first
    receiver: tuple | None = None  # the (layer, head) shown, when it is a receiver of the clicked head
    direction: str = "denoise"


def _np(t):
    return t.detach().float().cpu().numpy()


def attention_for_cell(registry, run, cell: dict, pair: int = 0, receiver=None) -> AttentionView:
    """Counterfactual attention of the clicked head of a stored run (pair `pair`).

    For q / k / pattern patches: the clicked head's own clean, corrupt and patched patterns. For
    head_out / head_v patches the clicked head's own pattern cannot change, so the view shows a
    *receiver*: a later head's pattern under the patch — `receiver` (layer, head), by default the
    one whose pattern changed most; `receivers` lists every head that moved.
    """
    from patching.methods.attention import counterfactual_attention, downstream_attention, reshapes_own_pattern
    result = run.result
    if getattr(result.spec, "kind", None) == "path":
        return _path_attention(registry, run, cell, pair)
    if cell is None or cell.get("head") is None or "head" not in result.axes:
        raise ValueError("click a cell of a head kind (head_out, head_q, head_k, head_v, head_pattern) "
                         "to see that head's attention")
    layer, head = int(cell["layer"]), int(cell["head"])
    if not 0 <= pair < len(run.pairs):
        raise ValueError(f"pair {pair} out of range; this run has pairs 0-{len(run.pairs) - 1}")
    spec = result.spec
    model, prompts = stored_prompts(registry, run)
    kind = KINDS[spec.kind]
    index = {k: v for k, v in cell.items() if v is not None and k in result.axes}
    heads_label = f"L{layer}.H{head}" if not kind.kv_heads else f"L{layer} key/value head {head}"
    where = f" at position {cell['pos']}" if cell.get("pos") is not None else ""
    if prompts.is_mixed:            # aligned by role: this pair alone, the role read at its own index
        cell = dict(cell)
        if result.roles and cell.get("pos") is not None:
            role = int(cell["pos"])
            cell["pos"] = prompts.role_positions()[pair][role]
            index["pos"] = cell["pos"]
            where = f" at {result.roles[role]} (position {cell['pos']})"
        prompts, spec = prompts.subset([pair]), replace(spec, positions=None)
        title_pair, pair = pair, 0
    else:
        title_pair = pair
    if not reshapes_own_pattern(spec.kind):
        down = downstream_attention(model, prompts, spec, index, pair=pair)
        ranked = tuple(down.ranked())
        if receiver is None and ranked:
            receiver = ranked[0][:2]
        if receiver is not None:
            rl, rh = (int(v) for v in receiver)
            diff = down.head(rl, rh)
            change = float(down.change[rl, rh])
            title = (f"Receiver L{rl}.H{rh} under a patch of {heads_label}{where} · pair {title_pair} "
                     f"· max change {change:.3f}")
            return AttentionView(_np(diff.clean), _np(diff.corrupt), _np(diff.patched), list(diff.str_tokens),
                                 title, f"patched: {diff.patch_label}", diff.to_dataframe(),
                                 list(diff.corrupt_str_tokens), list(diff.patched_str_tokens),
                                 ranked, (rl, rh), spec.direction)
    title = f"Counterfactual attention · {heads_label}{where} · pair {title_pair}"
    # k/v kinds index key/value heads: show the first query head of the group
    q_head = head if not kind.kv_heads else head * (model.n_heads // model.n_kv_heads)
    if kind.kv_heads and q_head != head:
        title += f" (query head {q_head})"
    diff = counterfactual_attention(model, prompts, layer, q_head, spec=spec, index=index, pair=pair)
    note = f"patched: {diff.patch_label}"
    if not reshapes_own_pattern(spec.kind):
        note = "no later head's pattern changes under this patch (it is at the last layer); " + note
    return AttentionView(_np(diff.clean), _np(diff.corrupt), _np(diff.patched), list(diff.str_tokens), title,
                         note, diff.to_dataframe(), list(diff.corrupt_str_tokens),
                         list(diff.patched_str_tokens), direction=spec.direction)


def _path_attention(registry, run, cell: dict | None, pair: int) -> AttentionView:
    """A path run's clicked sender cell -> the attention of its receiver head (the first q/k/v
    receiver): clean, corrupt and step 2's pattern (the receivers patched)."""
    from patching.methods.attention import counterfactual_attention
    result, spec = run.result, run.result.spec
    receivers = [n for n in (spec.receiver_nodes or ()) if n.kind in ("q", "k", "v")]
    if cell is None or "head" not in result.axes or cell.get("head") is None:
        raise ValueError("click a sender head cell of an every-head path sweep to see its receiver's attention")
    if not receivers:
        raise ValueError("this path run has no q/k/v receiver head, so no attention pattern changes; "
                         "choose q:L.H, k:L.H or v:L.H receivers to see one")
    if not 0 <= pair < len(run.pairs):
        raise ValueError(f"pair {pair} out of range; this run has pairs 0-{len(run.pairs) - 1}")
    model, prompts = stored_prompts(registry, run)
    r = receivers[0]
    head = r.head if r.kind == "q" else r.head * (model.n_heads // model.n_kv_heads)
    index = {k: v for k, v in cell.items() if v is not None and k in result.axes}
    diff = counterfactual_attention(model, prompts, r.layer, head, spec=spec, index=index, pair=pair)
    sender = f"L{cell['layer']}.H{cell['head']}" + (f"@{cell['pos']}" if cell.get("pos") is not None else "")
    title = f"Receiver attention · L{r.layer}.H{head} ({r.label}) · sender {sender} · pair {pair}"
    to_np = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
    return AttentionView(to_np(diff.clean), to_np(diff.corrupt), to_np(diff.patched), list(diff.str_tokens),
                         title, f"patched: {diff.patch_label}", diff.to_dataframe(),
                         list(diff.corrupt_str_tokens), list(diff.patched_str_tokens))


def attention_csv(view: AttentionView) -> str:
    """One row per (dest, src): tokens, clean, corrupt, patched (when known) and differences."""
    import pandas as pd
    from patching.core.results import write_csv
    rows = []
    n = len(view.clean)
    for d in range(n):
        for s in range(d + 1):
            row = {"dest": d, "src": s, "dest_token": view.str_tokens[d] if d < len(view.str_tokens) else "",
                   "src_token": view.str_tokens[s] if s < len(view.str_tokens) else "",
                   "clean": float(view.clean[d][s]), "corrupt": float(view.corrupt[d][s])}
            corrupt = view.corrupt_tokens or view.str_tokens
            if view.patched is not None:
                row["patched"] = float(view.patched[d][s])
            row["clean_minus_corrupt"] = row["clean"] - row["corrupt"]
            if view.patched is not None:
                row["patched_minus_corrupt"] = row["patched"] - row["corrupt"]
            row["corrupt_dest_token"] = corrupt[d] if d < len(corrupt) else ""
            row["corrupt_src_token"] = corrupt[s] if s < len(corrupt) else ""
            rows.append(row)
    return write_csv(pd.DataFrame(rows))
