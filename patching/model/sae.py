"""Sparse autoencoders (SAEs) in sae-lens' own on-disk format: one folder per SAE holding
`cfg.json` and `sae_weights.safetensors` (`W_enc [d_in, d_sae]`, `b_enc`, `W_dec [d_sae, d_in]`,
`b_dec`, plus `threshold` for JumpReLU).

Why not `import sae_lens`: every sae-lens release (6.54.12 checked) requires
`transformer-lens<4`, and its modules import `transformer_lens.HookedTransformer`, which
TransformerLens 4 removed; it cannot be installed beside the pinned TransformerLens 4.3.0. So
Patchboard reads and writes sae-lens' format itself -- the architectures `standard` (ReLU),
`jumprelu` and `topk`, with sae-lens' encode / decode formulas (`process_sae_in`: subtract
`b_dec` when `apply_b_dec_to_input`) -- and SAEs trained with sae-lens load here unchanged.

The reconstruction error `x - decode(encode(x))` is kept apart so that a model with its SAEs
spliced in (`decode(encode(x)) + error`) is the model itself.

>>> sae = Sae.random("blocks.1.hook_resid_pre", d_in=8, d_sae=32, seed=0)
>>> x = torch.randn(2, 5, 8)
>>> torch.allclose(sae.decode(sae.encode(x)) + sae.error(x), x, atol=1e-6)
True
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

CFG_FILE = "cfg.json"                      # sae-lens' SAE_CFG_FILENAME
WEIGHTS_FILE = "sae_weights.safetensors"   # sae-lens' SAE_WEIGHTS_FILENAME
ARCHITECTURES = ("standard", "jumprelu", "topk")
SAE_LENS_FORMAT_VERSION = "6.54.12"        # the sae-lens release whose format this writes
_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|mid|post)$")


@dataclass(frozen=True, eq=False)
class Sae:
    """One SAE on one residual-stream hook (`blocks.L.hook_resid_pre|mid|post`).

    >>> Sae.random("blocks.0.hook_resid_pre", d_in=4, d_sae=16).layer
    0
    """
    hook_name: str
    W_enc: Tensor                     # [d_in, d_sae]
    b_enc: Tensor                     # [d_sae]
    W_dec: Tensor                     # [d_sae, d_in]
    b_dec: Tensor                     # [d_in]
    architecture: str = "standard"
    threshold: Tensor | None = None   # [d_sae], jumprelu only
    k: int | None = None              # topk only
    apply_b_dec_to_input: bool = True
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"SAE architecture {self.architecture!r} is not supported; "
                             f"supported: {', '.join(ARCHITECTURES)}")
        if not _HOOK.match(self.hook_name):
            raise ValueError(f"SAE hook {self.hook_name!r} is not a residual-stream hook; "
                             "expected blocks.<layer>.hook_resid_pre, _mid or _post")
        d_in, d_sae = self.W_enc.shape
        shapes = {"b_enc": (self.b_enc, (d_sae,)), "W_dec": (self.W_dec, (d_sae, d_in)),
                  "b_dec": (self.b_dec, (d_in,))}
        if self.architecture == "jumprelu":
            if self.threshold is None:
                raise ValueError("a jumprelu SAE needs its `threshold` [d_sae]")
            shapes["threshold"] = (self.threshold, (d_sae,))
        for name, (t, want) in shapes.items():
            if tuple(t.shape) != want:
                raise ValueError(f"SAE {self.hook_name}: {name} has shape {tuple(t.shape)}, "
                                 f"expected {want} (W_enc is [d_in={d_in}, d_sae={d_sae}])")
        if self.architecture == "topk" and not (isinstance(self.k, int) and 0 < self.k <= d_sae):
            raise ValueError(f"a topk SAE needs k in 1..{d_sae}, got {self.k!r}")

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def layer(self) -> int:
        return int(_HOOK.match(self.hook_name).group(1))

    @property
    def site(self) -> str:
        """`resid_pre`, `resid_mid` or `resid_post`: the patch kind of the hooked activation."""
        return "resid_" + _HOOK.match(self.hook_name).group(2)

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations [..., d_sae] of x [..., d_in], as sae-lens computes them."""
        sae_in = x.to(self.W_enc.dtype) - (self.b_dec if self.apply_b_dec_to_input else 0)
        pre = sae_in @ self.W_enc + self.b_enc
        if self.architecture == "jumprelu":
            return pre.relu() * (pre > self.threshold).to(pre.dtype)
        if self.architecture == "topk":
            values, indices = pre.topk(self.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter(-1, indices, values.relu())
        return pre.relu()

    def decode(self, acts: Tensor) -> Tensor:
        """The reconstruction [..., d_in] from feature activations [..., d_sae]."""
        return acts @ self.W_dec + self.b_dec

    def error(self, x: Tensor) -> Tensor:
        """x - decode(encode(x)): what the SAE misses, [..., d_in]."""
        return x - self.decode(self.encode(x))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Sae":
        """The same SAE with every tensor on `device` (and `dtype`)."""
        move = (lambda t: None if t is None else t.to(device=device, dtype=dtype or t.dtype))
        return Sae(self.hook_name, move(self.W_enc), move(self.b_enc), move(self.W_dec), move(self.b_dec),
                   self.architecture, move(self.threshold), self.k, self.apply_b_dec_to_input, dict(self.metadata))

    @staticmethod
    def random(hook_name: str, d_in: int, d_sae: int, seed: int = 0) -> "Sae":
        """An untrained SAE (for tests): Kaiming-uniform encoder, decoder = encoder.T."""
        g = torch.Generator().manual_seed(seed)
        w_enc = (torch.rand(d_in, d_sae, generator=g) * 2 - 1) / d_in ** 0.5
        return Sae(hook_name, w_enc, torch.zeros(d_sae), w_enc.T.contiguous(), torch.zeros(d_in))

    def to_cfg(self) -> dict:
        """sae-lens' cfg.json for this SAE (format of sae-lens 6)."""
        cfg = {"architecture": self.architecture, "d_in": self.d_in, "d_sae": self.d_sae,
               "dtype": str(self.W_enc.dtype).removeprefix("torch."), "device": "cpu",
               "apply_b_dec_to_input": self.apply_b_dec_to_input, "normalize_activations": "none",
               "reshape_activations": "none",
               "metadata": {"sae_lens_version": SAE_LENS_FORMAT_VERSION, "hook_name": self.hook_name,
                            "hook_head_index": None, "prepend_bos": True, **self.metadata}}
        if self.architecture == "topk":
            cfg.update(k=self.k, rescale_acts_by_decoder_norm=False)
        return cfg


def save_sae(sae: Sae, folder: str | Path) -> Path:
    """Write `sae` as sae-lens does (cfg.json + sae_weights.safetensors) into `folder`.

    >>> import tempfile
    >>> d = save_sae(Sae.random("blocks.2.hook_resid_post", 4, 8), tempfile.mkdtemp())
    >>> load_sae(d).hook_name
    'blocks.2.hook_resid_post'
    """
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(folder / WEIGHTS_FILE))
    (folder / CFG_FILE).write_text(json.dumps(sae.to_cfg(), indent=1, sort_keys=True) + "\n")
    return folder


def _cfg_hook_name(cfg: dict, folder: Path) -> str:
    """The hook of a cfg.json in the sae-lens 6 layout (`metadata.hook_name`) or the older one."""
    meta = cfg.get("metadata") or {}
    name = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if not name:
        raise ValueError(f"{folder / CFG_FILE} names no hook (metadata.hook_name, hook_name or hook_point)")
    return name


def load_sae(folder: str | Path, device: str | torch.device = "cpu") -> Sae:
    """Read one sae-lens-format SAE folder; errors name the file and the value that is wrong."""
    from safetensors.torch import load_file
    folder = Path(folder)
    for name in (CFG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"{folder} is not an SAE folder: {name} is missing "
                                    f"(an SAE folder holds {CFG_FILE} and {WEIGHTS_FILE}, as sae-lens writes)")
    cfg = json.loads((folder / CFG_FILE).read_text())
    for key in ("normalize_activations", "reshape_activations"):
        if cfg.get(key, "none") not in ("none", None):
            raise ValueError(f"{folder / CFG_FILE}: {key}={cfg[key]!r} is not supported (only 'none')")
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise ValueError(f"{folder / CFG_FILE}: rescale_acts_by_decoder_norm=true is not supported")
    w = load_file(str(folder / WEIGHTS_FILE), device=str(device))
    missing = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k not in w]
    if missing:
        raise ValueError(f"{folder / WEIGHTS_FILE} lacks {', '.join(missing)} (has {', '.join(sorted(w))})")
    meta = {k: v for k, v in (cfg.get("metadata") or {}).items()
            if k in ("model_name", "dataset_path", "context_size", "trained_by")}
    return Sae(_cfg_hook_name(cfg, folder), w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"],
               architecture=cfg.get("architecture", "standard"), threshold=w.get("threshold"),
               k=cfg.get("k"), apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
               metadata=meta)


def load_saes(folder: str | Path, device: str | torch.device = "cpu") -> dict[str, Sae]:
    """Every SAE under `folder` (each in a sub-folder with cfg.json), keyed by hook name, in
    layer order.

    >>> import tempfile; root = Path(tempfile.mkdtemp())
    >>> for layer in (1, 0):
    ...     _ = save_sae(Sae.random(f"blocks.{layer}.hook_resid_pre", 4, 8), root / str(layer))
    >>> list(load_saes(root))
    ['blocks.0.hook_resid_pre', 'blocks.1.hook_resid_pre']
    """
    folder = Path(folder)
    saes = [load_sae(cfg.parent, device) for cfg in sorted(folder.glob(f"*/{CFG_FILE}"))]
    if not saes:
        raise ValueError(f"no SAE under {folder}: expected sub-folders holding {CFG_FILE} "
                                f"and {WEIGHTS_FILE} (sae-lens' format)")
    by_hook: dict[str, Sae] = {}
    for sae in sorted(saes, key=lambda s: (s.layer, s.site)):
        if sae.hook_name in by_hook:
            raise ValueError(f"two SAEs under {folder} hook {sae.hook_name}")
        by_hook[sae.hook_name] = sae
    return by_hook


def sae_folder(source: str | Path) -> Path:
    """A folder of SAEs from a local path or a Hugging Face repo id already in the local cache
    (nothing is downloaded); ValueError naming both places looked in."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(str(source), local_files_only=True))
    except Exception as exc:  # noqa: BLE001 -- any hub failure means "not in the cache"
        raise ValueError(f"SAEs {str(source)!r}: no such folder, and no Hugging Face repo of that "
                                f"name in the local cache ({type(exc).__name__}); give a folder of "
                                f"sae-lens SAE folders") from None


def has_saes(model) -> bool:
    """Does the model ship SAEs (a `saes/` folder beside a local model)? Reads no weights.

    >>> has_saes(model)
    True
    """
    from patching.model.resolve import resolve_model
    try:
        where = resolve_model(model.name)
    except ValueError:
        return False
    return isinstance(where, Path) and (where / "saes").is_dir()


def model_saes(model, source: str | Path | None = None) -> dict[int, Sae]:
    """layer -> the SAE on `blocks.<layer>.hook_resid_pre`, on the model's device and dtype.

    `source`: a folder of sae-lens SAE folders (or a cached hub repo id); None = the `saes/`
    folder beside a local model (the shipped model has one).

    >>> sorted(model_saes(model))
    [0, 1, 2, 3]
    """
    from patching.model.resolve import resolve_model
    if source is None:
        where = resolve_model(model.name)
        if not isinstance(where, Path) or not (where / "saes").is_dir():
            raise ValueError(f"model {model.name!r} ships no SAEs (no saes/ folder beside it); "
                                    "pass saes=<folder of sae-lens SAE folders>")
        source = where / "saes"
    saes = load_saes(sae_folder(source))
    dtype = next(model.hf.parameters()).dtype
    out: dict[int, Sae] = {}
    for sae in saes.values():
        if sae.site != "resid_pre":
            continue
        if sae.d_in != model.cfg.d_model:
            raise ValueError(f"SAE {sae.hook_name} reads d_in={sae.d_in}, but {model.name!r} has "
                             f"d_model={model.cfg.d_model}: these SAEs belong to another model")
        out[sae.layer] = sae.to(model.device, dtype)
    sizes = {sae.d_sae for sae in out.values()}
    if len(sizes) > 1:
        raise ValueError(f"the SAEs under {source} have different sizes ({sorted(sizes)} features); "
                         "one feature axis needs SAEs of one size")
    if not out:
        raise ValueError(f"no SAE under {source} reads a block input (blocks.<layer>.hook_resid_pre); "
                         f"found: {', '.join(saes)}")
    return out
