import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests.tiny_models import FAMILIES, save_tiny_model  # noqa: E402

IOI = [
    ("When Mary and John went to the store, John gave a drink to",
     "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    ("When John and Mary went to the park, Mary gave a book to",
     "When John and Mary went to the park, John gave a book to", " John", " Mary"),
]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """family -> directory of a saved tiny random model (built once per session)."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {f: save_tiny_model(f, root / f) for f in FAMILIES}


@pytest.fixture(scope="session")
def tiny_models(tiny_dirs):
    """family -> Model, loaded through the same path users use."""
    from patching import load_model
    return {f: load_model(str(d)) for f, d in tiny_dirs.items()}


@pytest.fixture(scope="session")
def gpt2_model(tiny_models):
    return tiny_models["gpt2"]


@pytest.fixture(scope="session")
def ioi_prompts(gpt2_model):
    from patching import PromptSet
    return PromptSet.from_pairs(gpt2_model, IOI)


@pytest.fixture(scope="module")
def registry(tiny_dirs, gpt2_model):
    """A registry offering the tiny GPT-2 model (by its directory), already loaded
    (tests/dashboard/conftest.py has its own, with the Llama model too)."""
    from patching.model.loading import ModelRegistry
    name = str(tiny_dirs["gpt2"])
    reg = ModelRegistry([name])
    reg.add(name, gpt2_model)
    return reg


RANDOM_D_SAE = 12        # features per random SAE (random_saes)


@pytest.fixture(scope="session")
def shipped_model():
    from patching.model.loading import load_model
    return load_model("default", device="cpu")


@pytest.fixture(scope="session")
def random_saes(shipped_model, tmp_path_factory):
    """A folder of random sae-lens-format SAEs for the shipped model, one per block input, with a
    negative encoder bias so that some features are off in each run."""
    import torch
    from patching.model import hooks
    from patching.model.sae import Sae, save_sae
    root = tmp_path_factory.mktemp("saes")
    d_model = shipped_model.cfg.d_model
    for layer in range(shipped_model.n_layers):
        r = Sae.random(hooks.resid_pre(layer), d_model, RANDOM_D_SAE, seed=layer)
        g = torch.Generator().manual_seed(100 + layer)
        sae = Sae(r.hook_name, r.W_enc * 3, -torch.rand(RANDOM_D_SAE, generator=g),
                  torch.randn(RANDOM_D_SAE, d_model, generator=g) * 0.3, torch.randn(d_model, generator=g) * 0.1)
        save_sae(sae, root / r.hook_name)
    return root
