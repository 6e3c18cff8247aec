"""Where Patchboard's files are: the shipped assets (models, CSS) and the default data directory,
in a checkout and in an installed copy (`pip install .`) alike.

In a checkout the assets are the top-level `assets/` folder; an installed copy carries the same
files as the package data `patchboard_assets` (pyproject.toml maps `assets/` to it). Run history
defaults to `.patchboard/` in the checkout, or `~/.patchboard` for an installed copy;
`$PATCHBOARD_DATA_DIR` overrides both.

>>> (assets_dir() / "models").is_dir()
True
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]      # the project root, when run from a checkout


def in_checkout() -> bool:
    """Whether this copy runs from the project's checkout (not an installed wheel)."""
    return (CHECKOUT / "assets").is_dir() and (CHECKOUT / "patching").is_dir()


def assets_dir() -> Path:
    """The assets folder: `assets/` of the checkout, else the installed `patchboard_assets` data."""
    if in_checkout():
        return CHECKOUT / "assets"
    spec = importlib.util.find_spec("patchboard_assets")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return CHECKOUT / "assets"


def models_dir() -> Path:
    """Where shipped models live (`assets/models/<name>/`)."""
    return assets_dir() / "models"


def default_data_dir() -> Path:
    """Run history, run lock and job cache: `$PATCHBOARD_DATA_DIR`, else `.patchboard` in the
    checkout, else `~/.patchboard`."""
    if os.environ.get("PATCHBOARD_DATA_DIR"):
        return Path(os.environ["PATCHBOARD_DATA_DIR"])
    return CHECKOUT / ".patchboard" if in_checkout() else Path.home() / ".patchboard"
