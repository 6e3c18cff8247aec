"""Patchboard for notebooks and installed copies: the engine's public API under one name, and the
`patchboard` console script (`patchboard sweep ...`, `patchboard dashboard ...`).

>>> import patchboard
>>> patchboard.PatchSpec(kind="head_out").kind
'head_out'
"""
from patching import *  # noqa: F401,F403 - the public API, re-exported
from patching import __all__ as _engine_api

__all__ = list(_engine_api)
