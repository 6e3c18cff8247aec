"""Patchboard's patching engine: load a model, build prompt pairs, sweep, read the result.

>>> from patching import load_model, PromptSet, PatchSpec, sweep
>>> model = load_model("default")
>>> prompts = PromptSet.single(model, "When Mary and John went to the store, John gave a drink to",
...     "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")
>>> sweep(model, prompts, PatchSpec(kind="head_out")).to_dataframe().shape    # one row per layer x head
(16, 11)
"""
from patching.model import hooks
from patching.methods.attention import counterfactual_attention
from patching.methods.attribution import run_attribution
from patching.methods.circuit import CircuitSpec, faithfulness, faithfulness_curve, rank_components
from patching.methods.sweep import sweep
from patching.kinds import KINDS
from patching.model.loading import Model, ModelRegistry, from_model, load_model
from patching.methods.path import PathSpec, run_path
from patching.core.prompts import PromptPair, PromptSet
from patching.core.results import PatchResult
from patching.core.spec import PatchSpec

__all__ = ["sweep", "run_path", "PathSpec", "run_attribution", "counterfactual_attention", "KINDS", "Model", "ModelRegistry", "load_model", "from_model", "PromptPair", "PromptSet",
           "PatchResult", "PatchSpec", "CircuitSpec", "faithfulness", "faithfulness_curve", "rank_components"]
