"""A job forked from the web server after the server ran torch work must not hang (OpenMP's
thread pool does not survive a fork): `fork_guard.single_threaded_server`."""
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import sys, time, torch, multiprocess as mp
    torch.set_num_threads(2)
    if sys.argv[1] == "guarded":
        from dashboard.server.fork_guard import single_threaded_server
        assert single_threaded_server() == 2 and torch.get_num_threads() == 1
    a = torch.randn(512, 512); (a @ a).sum()          # the server's own multi-threaded work

    def job(q):
        b = torch.randn(512, 512); (b @ b).sum()
        q.put(torch.get_num_threads())

    q = mp.Queue(); p = mp.Process(target=job, args=(q,)); p.start(); p.join(20)
    if p.is_alive():
        p.kill(); print("hung"); sys.exit(0)
    print("threads", q.get())
""")


def _run(mode: str) -> str:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_job_forked_from_the_guarded_server_runs_with_the_servers_threads():
    # Unguarded ("plain"), the same script prints "hung" on this 2-core machine.
    assert _run("guarded") == "threads 2"



CALIBRATE = textwrap.dedent("""
    import torch
    torch.set_num_threads(2)
    from dashboard.server.fork_guard import in_forked_process, job_like_calibration, single_threaded_server
    from patching import PromptSet, load_model
    from tests.conftest import IOI
    single_threaded_server()                               # first, as `python -m dashboard` does
    model = load_model("default", device="cpu")
    prompts = PromptSet.from_pairs(model, IOI)
    cal = job_like_calibration(model, prompts)            # forked: timed with the jobs' 2 threads
    assert cal.unit_seconds > 0 and cal.model_name == model.name, cal
    assert in_forked_process(torch.get_num_threads) == 2 and torch.get_num_threads() == 1
    try:
        in_forked_process(int, "x")
    except ValueError as exc:
        print("raised", exc)
""")


def test_the_cost_calibration_runs_like_a_job_and_errors_come_back():
    out = subprocess.run([sys.executable, "-c", CALIBRATE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "raised invalid literal for int() with base 10: 'x'"
