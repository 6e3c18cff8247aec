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
from patching.methods import sweep as engine
from patching.model import memory_budget as mb
from patching.model.loading import ModelRegistry, check_device_map, is_split, load_model
from patching.core.prompts import PromptSet
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


@pytest.fixture(scope="module")
def split_model(tmp_path_factory):
    # a CPU budget of a few MiB pushes the later blocks to disk: a real split, on CPU only, with
    # accelerate's offload hooks loading those blocks' weights (meta tensors until then) per call
    model = load_model("default", device_map="auto", max_memory={"cpu": "3MiB"},
                       offload_folder=tmp_path_factory.mktemp("offload"))
    assert is_split(model.device_map) and "disk" in model.device_map.values()
    offloaded = [n for n, p in model.hf.named_parameters() if p.device.type == "meta"]
    assert offloaded, "nothing was offloaded: the test would not exercise the split"
    return model


@pytest.mark.parametrize("kind", ["resid_pre", "head_out", "attn_out", "mlp_out", "head_v", "head_pattern"])
def test_a_split_model_keeps_the_runner_and_the_numbers(reference, split_model, kind):
    ref_model, _ = reference
    assert split_model.runner is not None and split_model.arch.home == torch.device("cpu")
    want = _sweep(ref_model, kind)
    got = _sweep(split_model, kind)
    assert got.values.shape == want.values.shape
    assert torch.allclose(got.values, want.values, atol=1e-4), (got.values - want.values).abs().max()


def test_what_needs_the_runner_runs_on_a_split_model(reference, split_model):
    """Path and attribution patching, chosen cells, the patched attention pattern, direct logit
    attribution and the weight views read offloaded weights through accelerate: same numbers."""
    from patching import counterfactual_attention, run_attribution
    from patching.inspect.lens import direct_logit_attribution
    from patching.methods.path import PathSpec, run_path
    from patching.inspect.weights import composition_scores
    ref_model, _ = reference
    pairs = [(m, PromptSet.from_pairs(m, IOI)) for m in (ref_model, split_model)]
    close = lambda a, b: torch.allclose(a, b, atol=1e-4, equal_nan=True) and a.isfinite().any()
    (r, rp), (s, sp) = pairs
    assert close(run_path(s, sp, PathSpec()).values, run_path(r, rp, PathSpec()).values)
    for got, want in zip(run_attribution(s, sp), run_attribution(r, rp)):
        assert close(got.values, want.values)
    cells = [(1, 3), (3, 5)]                  # (layer, pos); the other cells stay NaN
    assert close(sweep(s, sp, PatchSpec(kind="resid_pre"), cells=cells).values,
                 sweep(r, rp, PatchSpec(kind="resid_pre"), cells=cells).values)
    att = [counterfactual_attention(m, p, 3, 1, spec=PatchSpec(kind="head_out"), index={"layer": 2, "head": 0})
           for m, p in pairs]
    assert close(att[0].patched, att[1].patched) and close(att[0].clean, att[1].clean)
    numbers = lambda df: torch.tensor(df.select_dtypes("number").to_numpy(dtype="float64", na_value=float("nan")))
    for frames in ([direct_logit_attribution(m, p) for m, p in pairs], [composition_scores(m) for m in (r, s)]):
        assert list(frames[0].columns) == list(frames[1].columns)
        assert close(numbers(frames[0]), numbers(frames[1]))


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])     # llama: grouped-query attention
def test_every_runner_family_runs_split_over_cpu_and_disk(tiny_dirs, tiny_models, family, tmp_path):
    from patching.methods.path import PathSpec, run_path
    ref = tiny_models[family]
    split = load_model(str(tiny_dirs[family]), device_map="auto", max_memory={"cpu": "100KiB"},
                       offload_folder=tmp_path)
    assert "disk" in split.device_map.values() and split.runner is not None
    for kind in ("resid_pre", "head_out", "mlp_out", "head_k"):
        got, want = (sweep(m, PromptSet.from_pairs(m, IOI), PatchSpec(kind=kind)).values for m in (split, ref))
        assert torch.allclose(got, want, atol=1e-5), kind
    got, want = (run_path(m, PromptSet.from_pairs(m, IOI), PathSpec()).values for m in (split, ref))
    assert torch.allclose(got, want, atol=1e-5)


def test_a_gpu_and_offload_map_boots_for_runner_families_only(tiny_dirs, tiny_models, monkeypatch, tmp_path):
    """TransformerLens 4.3 refuses GPU + CPU/disk maps in its bridge. A runner family still loads
    (the runner does every forward, through accelerate's offload hooks); there is no GPU here, so
    a CPU + disk map stands in for one, through the same refusal and the same admission."""
    from patching.model import loading as models
    from patching.model.loading import mixes_gpu_and_offload
    assert mixes_gpu_and_offload({"a": "0", "b": "cpu"}) and mixes_gpu_and_offload({"a": "cuda:1", "b": "disk"})
    assert not mixes_gpu_and_offload({"a": "0", "b": "1"}) and not mixes_gpu_and_offload({"a": "cpu", "b": "disk"})
    monkeypatch.setattr(models, "mixes_gpu_and_offload", lambda placed: "disk" in placed.values())
    from transformer_lens.utilities import multi_gpu
    monkeypatch.setattr(multi_gpu, "is_mixed_offload_gpu", lambda values: "disk" in list(values))
    split = load_model(str(tiny_dirs["llama"]), device_map="auto", max_memory={"cpu": "100KiB"},
                       offload_folder=tmp_path)
    assert "disk" in split.device_map.values() and split.hf.hf_device_map      # the map is back
    got, want = (sweep(m, PromptSet.from_pairs(m, IOI), PatchSpec(kind="head_out")).values
                 for m in (split, tiny_models["llama"]))
    assert torch.allclose(got, want, atol=1e-5)
    monkeypatch.setattr(models, "arch_for", lambda *a, **k: None)             # a family without a runner
    with pytest.raises(ValueError, match=r"mixes GPUs with CPU/disk offload.*only the engine's runner"):
        load_model(str(tiny_dirs["llama"]), device_map="auto", max_memory={"cpu": "100KiB"},
                   offload_folder=tmp_path / "2")


def test_an_unsupported_family_is_named_when_the_runner_is_missing(gpt2_model):
    from patching.model.loading import require_runner
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
    # a model split over two GPUs (and offloaded to the CPU): the smaller GPU's budget
    free = {0: 40 * 2**30, 1: 10 * 2**30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (free[torch.device(dev).index], 80 * 2**30))
    split = mb.placed_devices({"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "1", "lm_head": "cpu"})
    assert split == (torch.device("cuda", 0), torch.device("cuda", 1))
    assert mb.memory_budget("cuda:0", also=split) == pytest.approx(0.6 * 10 * 2**30)
    assert mb.memory_budget("cuda:0", 256, also=split) == 256 * 2**20          # an explicit budget wins


def test_sweep_batches_follow_the_budget_of_its_device(monkeypatch, gpt2_model, ioi_prompts):
    seen = []
    real = engine.memory_budget

    def spy(device, max_memory_mb=None, also=()):
        seen.append((torch.device(device), max_memory_mb, also))
        return real(device, 0.05 if max_memory_mb is None else max_memory_mb)   # tiny: many batches

    full = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out"))
    monkeypatch.setattr(engine, "memory_budget", spy)
    small = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out"))
    assert seen == [(gpt2_model.device, None, ())]                  # one device: nothing else to ask
    assert torch.allclose(small.values, full.values, atol=1e-5)


def test_path_patching_and_circuits_follow_the_budget_of_their_device(monkeypatch, gpt2_model, ioi_prompts):
    from patching.methods import circuit
    from patching.methods import path
    from patching.methods.circuit import CircuitSpec, faithfulness
    from patching.methods.path import PathSpec, run_path
    full_path = run_path(gpt2_model, ioi_prompts, PathSpec())
    full_circuit = faithfulness(gpt2_model, ioi_prompts, CircuitSpec(components=("L0H0", "L1H1")))
    for module in (path, circuit):
        seen = []

        def spy(device, max_memory_mb=None, also=(), seen=seen):
            seen.append((torch.device(device), max_memory_mb))
            return mb.memory_budget(device, 0.01)                 # tiny: one row per batch
        monkeypatch.setattr(module, "memory_budget", spy)
        if module is path:
            small = run_path(gpt2_model, ioi_prompts, PathSpec())
            assert torch.allclose(small.values, full_path.values, atol=1e-5)
        else:
            small = faithfulness(gpt2_model, ioi_prompts, CircuitSpec(components=("L0H0", "L1H1")))
            assert small.m_circuit == pytest.approx(full_circuit.m_circuit, abs=1e-5)
        assert seen and set(seen) == {(gpt2_model.device, None)}, module.__name__


def test_integrated_gradients_batch_steps_by_the_budget_of_their_device(monkeypatch, gpt2_model, ioi_prompts):
    from patching.methods import attribution
    full = attribution.run_attribution(gpt2_model, ioi_prompts, kinds=["head_out"], method="ig", steps=6)
    seen, rows = [], []
    real_forward = attribution._forward

    def spy(device, max_memory_mb=None, also=()):
        seen.append((torch.device(device), max_memory_mb))
        return mb.memory_budget(device, 0.01)                     # tiny: one step per batch

    def counting_forward(runner, x0, *args, **kwargs):
        rows.append(x0.shape[0])
        return real_forward(runner, x0, *args, **kwargs)
    monkeypatch.setattr(attribution, "memory_budget", spy)
    monkeypatch.setattr(attribution, "_forward", counting_forward)
    small = attribution.run_attribution(gpt2_model, ioi_prompts, kinds=["head_out"], method="ig", steps=6)
    assert seen and set(seen) == {(gpt2_model.device, None)}       # pair batches and IG steps: this device's budget
    assert rows == [1] * (ioi_prompts.n_pairs * 6)                 # tiny budget: one pair, one step per backward
    assert torch.allclose(small[0].values, full[0].values, atol=1e-5)


def test_execution_device_reads_accelerate_hooks_then_parameters():
    from torch import nn
    from patching.model.arch import execution_device
    cpu = torch.device("cpu")
    lin = nn.Linear(2, 2)
    assert execution_device(lin, torch.device("meta")) == cpu                       # its parameters
    lin._hf_hook = types.SimpleNamespace(execution_device=1)                         # accelerate: a GPU index
    assert execution_device(lin, cpu) == torch.device("cuda", 1)
    lin._hf_hook = types.SimpleNamespace(hooks=[types.SimpleNamespace(), types.SimpleNamespace(execution_device="cuda:0")])
    assert execution_device(lin, cpu) == torch.device("cuda", 0)                    # a SequentialHook
    on_meta = nn.Linear(2, 2, device="meta")                                         # offloaded, no hook
    assert execution_device(on_meta, torch.device("cuda", 2)) == torch.device("cuda", 2)


def test_check_placement_command_compares_split_and_unsplit(capsys):
    """`python -m patching check-placement`: the one command to run on new hardware (a GPU split
    has not been run by this suite); here a CPU + disk split of the shipped model."""
    from patching.cli import main
    from patching.bench.placement import parse_max_memory
    assert main(["check-placement", "--max-memory", "cpu=3MiB"]) == 0
    out = capsys.readouterr().out
    assert sum(line.endswith("  ok") for line in out.splitlines()[1:]) == 7 and "DIFFERS" not in out, out
    assert main(["check-placement", "--max-memory", "cpu=3MiB", "--atol", "-1"]) == 1   # it can fail
    assert "DIFFERS" in capsys.readouterr().out
    assert main(["check-placement", "--max-memory", "cpu=64GiB"]) == 2                 # nothing split
    assert "nothing to compare" in capsys.readouterr().err
    assert parse_max_memory("0=12GiB,cpu=48GiB") == {0: "12GiB", "cpu": "48GiB"}
    with pytest.raises(ValueError, match="not DEVICE=SIZE"):
        parse_max_memory("0:12GiB")
