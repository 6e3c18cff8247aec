"""The names the docstring examples of patching/, metrics/ and dashboard/ may use without defining
them (`make test` runs them, `--doctest-modules` in pytest.ini):

- `model`: the shipped tiny model, `load_model("default")` on the CPU (loaded once);
- `prompts`: one IOI pair on it ("When Mary and John went to the store, John gave a drink to" /
  "... Mary gave ...", answer " Mary", wrong " John"); `pairs`: its `(clean, corrupt, answer, wrong)`s;
- `result`: `sweep(model, prompts, PatchSpec(kind="head_out"))` (computed once);
- `tmp_path`: a fresh folder; `store`: a `RunStore` in it.

Each is made only for an example that names it (skipped examples do not count), so a run of the
pure examples loads no model.
"""
from __future__ import annotations

import doctest
import re

import pytest

IOI_PAIR = ("When Mary and John went to the store, John gave a drink to",
            "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")


@pytest.fixture(scope="session")
def doctest_model():
    from patching.model.loading import load_model
    return load_model("default", device="cpu")


@pytest.fixture(scope="session")
def doctest_prompts(doctest_model):
    from patching.core.prompts import PromptSet
    return PromptSet.single(doctest_model, *IOI_PAIR)


@pytest.fixture(scope="session")
def doctest_result(doctest_model, doctest_prompts):
    from patching.core.spec import PatchSpec
    from patching.methods.sweep import sweep
    return sweep(doctest_model, doctest_prompts, PatchSpec(kind="head_out"))


def _store(request):
    from patching.runs.store import RunStore
    return RunStore(request.getfixturevalue("tmp_path"))


NAMES = {
    "model": lambda request: request.getfixturevalue("doctest_model"),
    "prompts": lambda request: request.getfixturevalue("doctest_prompts"),
    "pairs": lambda request: request.getfixturevalue("doctest_prompts").pairs,
    "result": lambda request: request.getfixturevalue("doctest_result"),
    "tmp_path": lambda request: request.getfixturevalue("tmp_path"),
    "store": _store,
}


@pytest.fixture(autouse=True)
def _doctest_names(request):
    """Put the names above into a doctest's namespace when its running examples use them."""
    test = getattr(request.node, "dtest", None)
    if not isinstance(test, doctest.DocTest):
        return
    source = "\n".join(ex.source for ex in test.examples if not ex.options.get(doctest.SKIP))
    for name, make in NAMES.items():
        if re.search(rf"\b{name}\b", source) and not re.search(rf"(^|\n){name} =", source):   # not its own
            test.globs[name] = make(request)
