"""What the end-to-end tests share: the system Chromium, its flags, the skip reason, and a
`python -m dashboard` subprocess on a free 127.0.0.1 port."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def skip_reason() -> str | None:
    if CHROMIUM is None:
        return "chromium is not installed (`make browser` installs Debian's chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed in the venv (pip install -r requirements.txt)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dashboard(data_dir: Path, *args: str, model_dir=None, log_name: str = "server.log",
                    start_timeout: float = 120) -> tuple[str, subprocess.Popen]:
    """`python -m dashboard` on a free 127.0.0.1 port around `data_dir` (the shipped default model
    unless `model_dir`; `args` are more flags); (url, process) once it answers, its output in
    data_dir/log_name."""
    port = free_port()
    model = ["--model", str(model_dir)] if model_dir is not None else []
    log_path = data_dir / log_name
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dashboard", "--host", "127.0.0.1", "--port", str(port), *model,
             "--data-dir", str(data_dir), "--device", "cpu", *args],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + start_timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return url, proc
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"dashboard did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.3)


def stop_dashboard(proc: subprocess.Popen) -> None:
    """Stop a dashboard and the job processes it forked."""
    import psutil
    for child in psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []:
        child.kill()
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_dashboard(model_dir, data_dir: Path, *args: str, start_timeout: float = 90):
    """Generator for a fixture: start `python -m dashboard` around model_dir, yield its URL, stop it."""
    url, proc = start_dashboard(data_dir, *args, model_dir=model_dir, start_timeout=start_timeout)
    yield url
    stop_dashboard(proc)

TIMEOUT_MS = 60_000
VIEWPORT = {"width": 1480, "height": 1000}


def open_context(timeout_ms: int = TIMEOUT_MS):
    """Generator for a fixture: the system Chromium and one browser context (downloads on)."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(accept_downloads=True, viewport=VIEWPORT)
        context.set_default_timeout(timeout_ms)
        yield context
        context.close()
        browser.close()


def open_page(url: str, ready: str | None = "#run-button", timeout_ms: int = TIMEOUT_MS):
    """Generator for a fixture: a page on `url`, once `ready` (a selector; default: the Run
    button, i.e. Dash has rendered the layout) is there. `page.errors` collects page errors."""
    for context in open_context(timeout_ms):
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        if ready:
            page.wait_for_selector(ready)
        page.errors = errors
        yield page


def one_screen_page(server: str, viewport: dict, timeout_ms: int, ready_js: str):
    """Generator for a fixture: a page at `viewport` on `server` once `ready_js` holds; `page.errors`
    collects page errors and `page.server` is the URL."""
    for context in open_context(timeout_ms):
        pg = context.new_page()
        pg.set_viewport_size(viewport)
        pg.errors = []
        pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))
        pg.goto(server)
        pg.wait_for_function(ready_js)
        pg.server = server
        yield pg


def shot(page, name: str) -> None:
    """Save a full-page screenshot as `name`.png under $PATCHBOARD_SCREENSHOTS, when it is set."""
    target = os.environ.get("PATCHBOARD_SCREENSHOTS")
    if target:
        out = ROOT / target if not os.path.isabs(target) else Path(target)
        out.mkdir(parents=True, exist_ok=True)
        page.mouse.move(2, 2)      # no hover label in the picture
        time.sleep(0.6)            # let plotly finish its transitions
        # The page fits one screen (panels scroll inside, style.css): grow the window by the
        # longest panel's hidden part so the picture shows everything, then put it back.
        size = page.viewport_size
        hidden = page.evaluate("""() => Math.max(0, ...Array.from(document.querySelectorAll('*'))
            .map(e => e.scrollHeight - e.clientHeight).filter(d => d > 0 && d < 6000))""")
        if hidden:
            page.set_viewport_size({"width": size["width"], "height": size["height"] + hidden})
            time.sleep(0.6)
        page.screenshot(path=str(out / f"{name}.png"), full_page=True)
        if hidden:
            page.set_viewport_size(size)
