"""Fixtures for the dashboard tests: an app around the tiny GPT-2 model, a store in a temp dir."""
from __future__ import annotations

import pytest

from tests.conftest import IOI


@pytest.fixture(scope="session")
def tiny_name(tiny_dirs):
    return str(tiny_dirs["gpt2"])


@pytest.fixture(scope="session")
def registry(tiny_name, gpt2_model, tiny_models, tiny_dirs):
    """A registry whose models are the already-loaded tiny models (names = their directories)."""
    from patching.model.loading import ModelRegistry
    reg = ModelRegistry([tiny_name])
    reg.add(tiny_name, gpt2_model)
    reg.add(str(tiny_dirs["llama"]), tiny_models["llama"])
    return reg


@pytest.fixture
def store(tmp_path):
    from patching.runs.store import RunStore
    return RunStore(tmp_path / "data")


@pytest.fixture
def app(registry, store, tiny_name):
    from dashboard import create_app, make_jobs
    return create_app(registry, store, make_jobs("diskcache", store.data_dir), model=tiny_name)


@pytest.fixture
def form(tiny_name):
    """A valid form: IOI pair 0 on the tiny model, head_out."""
    from dashboard.forms import Form
    clean, corrupt, answer, wrong = IOI[0]
    return Form(model=tiny_name, clean=clean, corrupt=corrupt, answer=answer, wrong=wrong,
                kind="head_out")
