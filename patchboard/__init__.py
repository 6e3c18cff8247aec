"""Patchboard for notebooks and installed copies: the engine's public API under one name,
`show(result)` (a result opened in the dashboard, patchboard/notebook.py), and the `patchboard`
console script (`patchboard sweep ...`, `patchboard dashboard ...`).

>>> import patchboard
>>> patchboard.PatchSpec(kind="head_out").kind
'head_out'
"""
from patching import *  # noqa: F401,F403 - the public API, re-exported
from patching import __all__ as _engine_api

from patchboard.notebook import show

__all__ = [*_engine_api, "show"]
