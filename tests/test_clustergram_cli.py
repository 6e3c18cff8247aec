"""`python -m patching clustergram`: a stored run or a run file -> the leaf order (and linkage,
matrix) as CSV, equal to the Python function's; bad input exits 2 with one line."""
import numpy as np
import pandas as pd
import pytest

from patching import PatchSpec, PromptSet, sweep
from patching.cli import main
from patching.inspect.clustergram import ClusterSpec, clustergram
from patching.runs import bundle as B
from patching.runs.store import RunStore
from tests.conftest import IOI


@pytest.fixture(scope="module")
def stored(gpt2_model, tiny_dirs, tmp_path_factory):
    prompts = PromptSet.from_pairs(gpt2_model, IOI)
    root = tmp_path_factory.mktemp("cg")
    r = sweep(gpt2_model, prompts, PatchSpec(kind="head_out", per_position=True, model=str(tiny_dirs["gpt2"])))
    resid = sweep(gpt2_model, prompts, PatchSpec(kind="resid_pre", model=str(tiny_dirs["gpt2"])))
    store = RunStore(root / "d")
    run_id, resid_id = store.save(r, prompts.pairs), store.save(resid, prompts.pairs)
    B.write_bundle(root / "run.patchboard.zip", [r], prompts.pairs)
    return root, r, run_id, resid_id


def test_cli_writes_the_functions_frames(stored, capsys):
    root, r, run_id, _ = stored
    out, link, prof = root / "order.csv", root / "link.csv", root / "prof.csv"
    assert main(["clustergram", "--data-dir", str(root / "d"), "--run", str(run_id), "--linkage", "complete",
                 "--value", "effect", "--out", str(out), "--linkage-out", str(link),
                 "--profile-out", str(prof)]) == 0
    cg = clustergram(r, ClusterSpec(linkage="complete", value="effect"))
    got = pd.read_csv(out)
    assert got.columns.tolist() == ["order", "layer", "head", "label", "detector", "joins_at"]
    assert got.label.tolist() == [f"L{l}H{h}" for l, h in cg.heads]
    assert np.allclose(got.joins_at, cg.frame().joins_at, rtol=1e-5)
    lk = pd.read_csv(link)
    assert np.allclose(lk.distance, cg.linkage[:, 2], rtol=1e-5) and lk["size"].iloc[-1] == len(cg.heads)
    assert len(pd.read_csv(prof)) == cg.profile.size


def test_cli_reads_a_run_file_and_names_detectors(stored, capsys):
    root, r, _, _ = stored
    assert main(["clustergram", "--run-file", str(root / "run.patchboard.zip"), "--profile", "mean",
                 "--detect", "--fires", "0"]) == 0
    got = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert len(got) == r.per_pair.shape[0] * r.per_pair.shape[2]
    assert got.detector.notna().all() and all(" · " in label for label in got.label)   # every head fires at 0


@pytest.mark.parametrize("argv, message", [
    ([], "give exactly one of --run ID or --run-file FILE"),
    (["--run", "999"], "run 999 does not exist"),
    (["--run", "RESID"], "needs a result with a head axis"),
    (["--run", "RUN", "--linkage", "ward"], "invalid choice: 'ward'"),
])
def test_cli_bad_input_exits_2(stored, capsys, argv, message):
    root, _, run_id, resid_id = stored
    argv = [{"RUN": str(run_id), "RESID": str(resid_id)}.get(a, a) for a in argv]
    try:
        code = main(["clustergram", "--data-dir", str(root / "d"), *argv])
    except SystemExit as exc:                  # argparse's own refusals
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
