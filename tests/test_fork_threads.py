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
        from dashboard.fork_guard import single_threaded_server
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

