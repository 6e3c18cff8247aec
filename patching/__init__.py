"""Patchboard's patching engine: load a model, build prompt pairs, sweep, read the result.

>>> from patching import load_model, PromptSet, PatchSpec, sweep      # doctest: +SKIP
>>> model = load_model("default")                                     # doctest: +SKIP
>>> prompts = PromptSet.single(model, "When Mary and John went to the store, John gave a drink to",
...     "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")  # doctest: +SKIP
>>> sweep(model, prompts, PatchSpec(kind="head_out")).to_dataframe()  # doctest: +SKIP
"""
from . import hooks
from .attention import counterfactual_attention
from .attribution import run_attribution
from .circuit import CircuitSpec, faithfulness, faithfulness_curve, rank_components
from .engine import sweep
from .kinds import KINDS
from .models import Model, ModelRegistry, load_model
from .path import PathSpec, run_path
from .prompts import PromptPair, PromptSet
from .results import PatchResult
from .spec import PatchSpec

__all__ = ["sweep", "run_path", "PathSpec", "run_attribution", "counterfactual_attention", "KINDS", "Model", "ModelRegistry", "load_model", "PromptPair", "PromptSet",
           "PatchResult", "PatchSpec", "CircuitSpec", "faithfulness", "faithfulness_curve", "rank_components"]
