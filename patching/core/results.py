"""PatchResult: per-pair values on the sweep's axes, baselines, statistics, DataFrame and CSV.

>>> result.values.shape           # (mean over pairs)  # doctest: +SKIP
torch.Size([4, 15])
>>> result.to_csv("out.csv")      # (the contract columns)  # doctest: +SKIP
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor

from patching.core.spec import PatchSpec

CSV_COLUMNS = ("kind", "direction", "metric", "layer", "pos", "head", "token", "value", "normalized")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value):
    """Neutralise spreadsheet formulas in text cells: '=cmd()' -> \"'=cmd()\".

    >>> safe_cell("=1+2"), safe_cell(" Mary"), safe_cell(-1.5)
    ("'=1+2", ' Mary', -1.5)
    """
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


@dataclass(frozen=True, eq=False)
class PatchResult:
    spec: PatchSpec
    axes: tuple[str, ...]                  # e.g. ("layer", "pos", "head")
    coords: dict[str, tuple[int, ...]]     # the layer / pos / head numbers along each axis
    per_pair: Tensor = field(repr=False)   # [*axis sizes, n_pairs]; NaN where not computed
    clean_baseline: Tensor = field(repr=False)     # [n_pairs] metric on the clean run
    corrupt_baseline: Tensor = field(repr=False)   # [n_pairs] metric on the corrupt run
    str_tokens: tuple[str, ...] = ()
    metric_clean_is: str = "higher"
    seconds: float = 0.0
    model_name: str = ""
    # where the run came from (patching.core.provenance.Provenance.to_dict()); keyword-only so the
    # subclasses' positional fields keep their places; None for runs saved before it existed
    provenance: dict | None = field(default=None, kw_only=True, repr=False)
    # a set of mixed lengths aligned by roles: the position axis is these roles (coords["pos"]
    # indexes them, str_tokens repeats them as labels); the CSV's pos and token cells hold the name
    roles: tuple[str, ...] | None = field(default=None, kw_only=True)

    @property
    def n_pairs(self) -> int:
        return self.per_pair.shape[-1]

    @property
    def values(self) -> Tensor:
        """Mean over pairs, [*axis sizes]."""
        return self.per_pair.mean(-1)

    @property
    def clean_value(self) -> float:
        return float(self.clean_baseline.mean())

    @property
    def corrupt_value(self) -> float:
        return float(self.corrupt_baseline.mean())

    @property
    def base_value(self) -> float:
        """The unpatched run's metric (mean over pairs): corrupt when denoising, clean when noising."""
        return self.corrupt_value if self.spec.direction == "denoise" else self.clean_value

    @property
    def normalized(self) -> Tensor:
        """(patched - corrupt) / (clean - corrupt): 1 = as clean, 0 = as corrupt (both directions)."""
        gap = self.clean_value - self.corrupt_value
        if abs(gap) < 1e-12:
            return torch.full_like(self.values, float("nan"))
        return (self.values - self.corrupt_value) / gap

    @property
    def base_per_pair(self) -> Tensor:
        """[n_pairs] the unpatched run's metric, pair by pair (corrupt when denoising, clean when noising)."""
        return self.corrupt_baseline if self.spec.direction == "denoise" else self.clean_baseline

    @property
    def effect_per_pair(self) -> Tensor:
        """[*axis sizes, n_pairs] patched - unpatched, pair by pair: 0 = patching changed nothing."""
        return self.per_pair - self.base_per_pair.to(self.per_pair)

    @property
    def effect(self) -> Tensor:
        """Mean over pairs of the paired effect, [*axis sizes] (= values - base_value)."""
        return self.effect_per_pair.mean(-1)

    @property
    def normalized_effect(self) -> Tensor:
        """effect / (clean - corrupt): 0 = no change, +1 = a full clean - corrupt gap towards clean,
        -1 = towards corrupt; in both directions (= normalized - normalized of the unpatched run)."""
        gap = self.clean_value - self.corrupt_value
        if abs(gap) < 1e-12:
            return torch.full_like(self.values, float("nan"))
        return self.effect / gap

    @property
    def stderr(self) -> Tensor:
        """Standard error of the paired effect (a cell that changes no pair has 0)."""
        if self.n_pairs < 2:
            return torch.full_like(self.values, float("nan"))
        return self.effect_per_pair.std(-1, unbiased=True) / self.n_pairs ** 0.5

    def bootstrap_ci(self, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[Tensor, Tensor]:
        """Percentile bootstrap interval of the mean paired effect (patched - unpatched), resampling
        pairs (seeded): an interval that excludes 0 is an effect the pairs agree on."""
        if self.n_pairs < 2:
            nan = torch.full_like(self.values, float("nan"))
            return nan, nan
        g = torch.Generator().manual_seed(seed)
        picks = torch.randint(self.n_pairs, (n_boot, self.n_pairs), generator=g)
        weights = torch.zeros(n_boot, self.n_pairs, dtype=self.per_pair.dtype)
        weights.scatter_add_(1, picks, torch.ones_like(picks, dtype=weights.dtype))
        flat = self.effect_per_pair.reshape(-1, self.n_pairs)
        means = flat @ weights.T / self.n_pairs                      # [cells, n_boot]
        lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2],
                                                    dtype=means.dtype), dim=1)
        return lo.reshape(self.values.shape), hi.reshape(self.values.shape)

    def to_json(self) -> dict:
        """A JSON-able dict (for the run store); `PatchResult.from_json` restores it exactly."""
        return {"spec": self.spec.to_dict(), "axes": list(self.axes),
                "coords": {k: list(v) for k, v in self.coords.items()},
                "per_pair": self.per_pair.tolist(), "shape": list(self.per_pair.shape),
                "clean_baseline": self.clean_baseline.tolist(),
                "corrupt_baseline": self.corrupt_baseline.tolist(),
                "str_tokens": list(self.str_tokens), "metric_clean_is": self.metric_clean_is,
                "seconds": self.seconds, "model_name": self.model_name, "provenance": self.provenance,
                **({"roles": list(self.roles)} if self.roles else {})}

    @staticmethod
    def json_fields(d: dict) -> tuple:
        """The positional fields after `spec`, read from `to_json`'s dict (subclasses share it)."""
        f64 = lambda x: torch.tensor(x, dtype=torch.float64)   # noqa: E731
        return (tuple(d["axes"]), {k: tuple(v) for k, v in d["coords"].items()},
                f64(d["per_pair"]).reshape(d["shape"]), f64(d["clean_baseline"]), f64(d["corrupt_baseline"]),
                tuple(d["str_tokens"]), d["metric_clean_is"], d["seconds"], d["model_name"])

    @classmethod
    def from_json(cls, d: dict) -> "PatchResult":
        roles = d.get("roles")
        return cls(PatchSpec.from_dict(d["spec"]), *PatchResult.json_fields(d), provenance=d.get("provenance"),
                   roles=tuple(str(r) for r in roles) if roles else None)

    def contract_frame(self, layer: list, pos: list, head: list) -> pd.DataFrame:
        """The contract columns of every cell (values' flattened order) with these layer / pos /
        head cells, then `effect` (patched - unpatched) and, with several pairs, stderr / ci_low /
        ci_high of that paired effect."""
        df = pd.DataFrame({
            "kind": self.spec.kind, "direction": self.spec.direction, "metric": self.spec.metric,
            "layer": layer, "pos": pos, "head": head,
            "token": pos if self.roles else
                     [self.str_tokens[p] if p is not None and p < len(self.str_tokens) else None for p in pos],
            "value": self.values.reshape(-1).tolist(), "normalized": self.normalized.reshape(-1).tolist(),
            "effect": self.effect.reshape(-1).tolist(),
        })
        if self.n_pairs > 1:
            lo, hi = self.bootstrap_ci()
            df["stderr"] = self.stderr.reshape(-1).tolist()
            df["ci_low"] = lo.reshape(-1).tolist()
            df["ci_high"] = hi.reshape(-1).tolist()
        return df

    def to_dataframe(self) -> pd.DataFrame:
        """One row per cell, contract columns first, then effect, stderr / ci_low / ci_high (of the
        paired effect) and n_pairs."""
        values = self.values
        grids = torch.meshgrid(*[torch.arange(values.shape[i]) for i in range(values.dim())], indexing="ij")
        flat_idx = [g.reshape(-1) for g in grids]
        columns = {name: [None] * values.numel() for name in ("layer", "pos", "head")}
        unit = next((a for a in ("neuron", "feature") if a in self.axes), None)   # a column of its own
        for axis, idx in zip(self.axes, flat_idx):
            name = "head" if axis == unit else axis
            columns[name] = [self.coords[axis][i] for i in idx.tolist()]
        if self.roles and "pos" in self.axes:          # the role's name, in pos and token alike
            columns["pos"] = [self.roles[p] for p in columns["pos"]]
        df = self.contract_frame(columns["layer"], columns["pos"], columns["head"])
        if unit is not None:
            df[unit] = df["head"]
            df["head"] = None
        if unit == "feature":          # the last unit is each SAE's error node
            last = self.coords["feature"][-1]
            df["feature_label"] = ["error" if f == last else f"F{f}" for f in df["feature"]]
        df["n_pairs"] = self.n_pairs
        df = df[~df["value"].isna()].reset_index(drop=True)
        for col in ("layer", "head") + (() if self.roles else ("pos",)):
            df[col] = df[col].astype("Int64")
        return df

    def to_csv(self, path_or_buf=None) -> str | None:
        """Write the contract CSV (formula-neutralised); returns the text when no path is given."""
        return write_csv(self.to_dataframe(), path_or_buf)

    # -- in a notebook (figures from patching.figures, imported when drawn: `import patching` stays light)
    def display_mode(self, mode: str = "normalized") -> str:
        """`mode`, or 'raw' when normalized values are undefined (equal clean and corrupt
        baselines): how the dashboard opens a result.

        >>> result.display_mode(), result.display_mode("raw")
        ('normalized', 'raw')
        """
        if mode == "normalized" and not torch.isfinite(self.normalized).any():
            return "raw"
        return mode

    def plot(self, mode: str = "normalized", **kwargs):
        """The plotly figure the dashboard draws for this result (`patching.figures.result_figure`:
        a heatmap of the effect, token-labelled positions, the diverging scale; bars for a one-axis
        path result); `mode` 'normalized' (falls back to 'raw' as the dashboard does) or 'raw';
        other keywords go to `result_figure` (e.g. head_labels).

        >>> result.plot().data[0].type
        'heatmap'
        """
        from patching.figures import result_figure
        return result_figure(self, self.display_mode(mode), **kwargs)

    def to_html(self, mode: str = "normalized", include_plotlyjs: bool | str = True) -> str:
        """The summary, the top cells by |effect| and the figure as an HTML fragment (plotly.js
        embedded by default: works offline; "cdn" for a light page where the network is there).

        >>> "top cells" in result.to_html(include_plotlyjs=False)
        True
        """
        from patching.core.display import result_html
        from patching.figures import graph_config
        return result_html(self, self.plot(mode), include_plotlyjs, graph_config())

    def _repr_html_(self) -> str:
        """What Jupyter shows for a result: `to_html()`."""
        return self.to_html()


_QUOTED_OR_ROW_END = re.compile(r'("(?:[^"]|"")*")|\r\n')     # a quoted cell is skipped whole


def _rows_end_in_newline(text: str) -> str:
    r"""CSV text with "\r\n" row ends -> "\n" row ends; line breaks inside quoted cells are kept.

    >>> _rows_end_in_newline('a,b\r\n"x\r\ny",1\r\n')
    'a,b\n"x\r\ny",1\n'
    """
    return _QUOTED_OR_ROW_END.sub(lambda m: m.group(1) or "\n", text)


def write_csv(df: pd.DataFrame, path_or_buf=None) -> str | None:
    r"""Contract CSV from a result DataFrame: text cells starting with = + - @ are neutralised, and
    a cell holding a line break ("\r" included) is quoted, so every row parses back whole.

    >>> import pandas as pd
    >>> write_csv(pd.DataFrame({"token": ["a\rb", "=1"], "value": [1.0, 2.0]})).split("\n")
    ['token,value', '"a\rb",1', "'=1,2", '']
    """
    df = df.copy()
    for col in df.columns:
        if df[col].dtype == object or str(df[col].dtype).startswith(("string", "str")):
            df[col] = df[col].map(safe_cell)
    buf = io.StringIO()
    # "\r\n" rows make the writer quote every cell that holds a "\r" (a "\n"-terminated writer
    # leaves it bare and readers split the row); the rows then end in "\n" again
    df.to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL, float_format="%.6g", lineterminator="\r\n")
    text = _rows_end_in_newline(buf.getvalue())
    if path_or_buf is None:
        return text
    if hasattr(path_or_buf, "write"):
        path_or_buf.write(text)
    else:
        with open(path_or_buf, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return None
