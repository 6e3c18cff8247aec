"""A stored result dict back as its class (the run store and run files read results here).

>>> result_from_json(PatchResult.to_json(result)).spec.kind            # doctest: +SKIP
'head_out'
"""
from __future__ import annotations

from patching.core.results import PatchResult
from patching.methods.attribution import AttributionResult
from patching.methods.path import PathResult


def result_from_json(d: dict) -> PatchResult:
    """The right result class for a result dict: PathResult for kind 'path', AttributionResult
    when it carries a method, else PatchResult.

    >>> type(result_from_json(run_path(model, prompts, PathSpec()).to_json())).__name__   # doctest: +SKIP
    'PathResult'
    """
    if d.get("spec", {}).get("kind") == "path":
        return PathResult.from_json(d)
    if "method" in d:
        return AttributionResult.from_json(d)
    return PatchResult.from_json(d)
