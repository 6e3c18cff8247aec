"""Large-model placement on CPU: `device_map` (accelerate), half precision, and the engine's
memory budget following the device.

Tolerances for half precision (documented in docs/DEPLOY.md), on the shipped default model's
head_out sweep: |value(dtype) - value(float32)| <= 1% of max |value| for float16 and 3% for
bfloat16 (measured: 0.12% and 0.7%).
"""
from __future__ import annotations

import types

import pytest
import torch

from patching import PatchSpec, sweep
from patching import engine, memory_budget as mb
from patching.models import ModelRegistry, check_device_map, is_split, load_model
from patching.prompts import PromptSet
from tests.conftest import IOI

HALF_TOLERANCE = {"float16": 0.01, "bfloat16": 0.03}      # of max |value| of the float32 sweep


@pytest.fixture(scope="module")
def reference():
    model = load_model("default", device="cpu")
    result = sweep(model, PromptSet.from_pairs(model, IOI), PatchSpec(kind="head_out"))
    return model, result


def _sweep(model, kind="head_out"):
    return sweep(model, PromptSet.from_pairs(model, IOI), PatchSpec(kind=kind))


def test_device_map_auto_on_one_device_keeps_the_runner_and_the_numbers(reference):
    _, ref = reference
    model = load_model("default", device="auto", device_map="auto")
    assert model.device_map == {"": "cpu"} and not is_split(model.device_map)
    assert model.runner is not None and model.device == torch.device("cpu")
    assert torch.equal(_sweep(model).values, ref.values)


def test_a_split_model_is_patched_through_hooks_and_matches(reference, tmp_path):
    _, ref = reference
    # a CPU budget of a few MiB pushes the later blocks to disk: a real split, on CPU only
    model = load_model("default", device_map="auto", max_memory={"cpu": "3MiB"}, offload_folder=tmp_path)
    assert is_split(model.device_map) and "disk" in model.device_map.values()
    assert model.runner is None                                # TransformerLens' hook path
    got = _sweep(model)
    assert got.values.shape == ref.values.shape
    assert torch.allclose(got.values, ref.values, atol=1e-4)
    # what needs the runner says why it is missing: the split, not an unsupported family
    from patching.path import PathSpec, run_path
    with pytest.raises(ValueError, match=r"path patching needs the engine's runner, but 'default' is split "
                                         r"across devices \(cpu, disk\).*load it on one device"):
        run_path(model, PromptSet.from_pairs(model, IOI), PathSpec())


def test_an_unsupported_family_is_named_when_the_runner_is_missing(gpt2_model):
    from patching.models import require_runner
    assert require_runner(gpt2_model, "x") is gpt2_model.runner
    bare = types.SimpleNamespace(runner=None, device_map=None, name="tiny-bert",
                                 cfg=types.SimpleNamespace(architecture="BertForMaskedLM"))
    with pytest.raises(ValueError, match=r"attribution patching needs the engine's runner, but it does not "
                                         r"support 'tiny-bert' \(BertForMaskedLM; supported: GPT-2"):
        require_runner(bare, "attribution patching")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_sweep_close_to_float32(reference, dtype):
    _, ref = reference
    model = load_model("default", dtype=dtype)
    assert next(model.hf.parameters()).dtype == getattr(torch, dtype)
    got = _sweep(model).values.float()
    scale = ref.values.abs().max()
    assert (got - ref.values).abs().max() <= HALF_TOLERANCE[dtype] * scale
    assert not torch.equal(got, ref.values.float())               # it really ran in lower precision


def test_device_map_and_dtype_validation():
    assert check_device_map(None) is None and check_device_map("auto", "cpu") == "auto"
    assert check_device_map({"": "cpu"}) == {"": "cpu"}
    with pytest.raises(ValueError, match="unknown device map 'everywhere'; use auto"):
        check_device_map("everywhere")
    with pytest.raises(ValueError, match="--device cuda:1 and --device-map auto both place the model"):
        check_device_map("auto", "cuda:1")
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        ModelRegistry(["default"], dtype="float8")
    with pytest.raises(ValueError, match="unknown device map"):
        ModelRegistry(["default"], device_map="nope")


def test_registry_passes_device_map_and_dtype():
    reg = ModelRegistry(["default"], device="auto", dtype="bfloat16", device_map="auto")
    model = reg.get("default")
    assert model.device_map == {"": "cpu"} and next(model.hf.parameters()).dtype == torch.bfloat16
    assert reg.get("default") is model                          # loaded once


# -- the memory budget ------------------------------------------------------------------------------
def test_budget_explicit_cpu_and_cuda(monkeypatch):
    assert mb.memory_budget("cpu", 256) == 256 * 2**20
    with pytest.raises(ValueError, match="max_memory_mb must be positive"):
        mb.memory_budget("cpu", -1)
    import psutil
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=8 * 2**30))
    assert mb.memory_budget("cpu") == 2 * 2**30                  # a quarter of 8 GiB available
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=64 * 2**30))
    assert mb.memory_budget("cpu") == mb.CPU_CAP_MB * 2**20      # capped
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=2**20))
    assert mb.memory_budget("cpu") == mb.FLOOR_MB * 2**20        # floored
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: asked.append(dev) or (40 * 2**30, 80 * 2**30))
    assert mb.memory_budget("cuda:1") == pytest.approx(0.6 * 40 * 2**30)
    assert asked == [torch.device("cuda:1")]
    assert mb.memory_budget("mps") == mb.FALLBACK_MB * 2**20


def test_sweep_batches_follow_the_budget_of_its_device(monkeypatch, gpt2_model, ioi_prompts):
    seen = []
    real = engine.memory_budget

    def spy(device, max_memory_mb=None):
        seen.append((torch.device(device), max_memory_mb))
        return real(device, 0.05 if max_memory_mb is None else max_memory_mb)   # tiny: many batches

    full = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out"))
    monkeypatch.setattr(engine, "memory_budget", spy)
    small = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out"))
    assert seen == [(gpt2_model.device, None)]
    assert torch.allclose(small.values, full.values, atol=1e-5)
