"""End-to-end: an upload over the server's cap is refused inline in the real page (the clientside
check), not silently dropped by the 413, and the page keeps working; a bad file under the cap
gets the server's message. `python -m dashboard --max-upload-mb 1` around the default model."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from dashboard import ids
from tests.e2e.support import ARGS, CHROMIUM, ROOT, free_port, skip_reason

pytestmark = pytest.mark.e2e
if skip_reason():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]
TIMEOUT = 60_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("upload-cap-data")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(data / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dashboard", "--port", str(port), "--data-dir", str(data),
                                 "--device", "cpu", "--max-upload-mb", "1"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail((data / "server.log").read_text()[-3000:])
        time.sleep(0.3)
    yield url, data
    proc.terminate()
    proc.wait(10)


def test_over_cap_upload_is_said_inline_and_the_page_keeps_working(server, tmp_path):
    from playwright.sync_api import sync_playwright
    url, data = server
    big = tmp_path / "big.csv"
    big.write_bytes(b"clean,corrupt,answer,wrong\n" + b"a b,a c, b, c\n" * 150_000)      # 2 MB
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("clean,corrupt,answer,wrong\nZoë,Zoé, é, è\n".encode("latin-1"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.wait_for_selector(f"#{ids.RUN_BUTTON}")
        error = page.locator(f"#{ids.ERROR_MESSAGE}")
        page.set_input_files(f"#{ids.PAIRS_UPLOAD} input[type=file]", str(big))
        page.wait_for_function(f"document.getElementById('{ids.ERROR_MESSAGE}').innerText.includes('larger than')")
        text = error.inner_text()
        assert "big.csv (2 MB) is larger than the 704 kB limit for pairs CSVs on this server" in text, text
        assert "--max-upload-mb" in text
        # the same page still talks to the server: a bad file under the cap gets the server's message
        page.set_input_files(f"#{ids.PAIRS_UPLOAD} input[type=file]", str(latin))
        page.wait_for_function(f"document.getElementById('{ids.ERROR_MESSAGE}').innerText.includes('UTF-8')")
        assert "latin1.csv: pairs CSV is not UTF-8 text" in error.inner_text()
        page.fill(f"#{ids.CLEAN_PROMPT}", "When Mary and John went to the store, John gave a drink to")
        page.wait_for_function(f"document.getElementById('{ids.TOKEN_VIEW}').innerText.includes('Mary')")
        assert not errors, errors
        browser.close()
    log = (data / "server.log").read_text()
    assert "Traceback" not in log
    assert " 413 " in log            # the over-cap request itself was refused by the server
