"""End-to-end: an upload over the server's cap is refused inline in the real page (the clientside
check), not silently dropped by the 413, and the page keeps working; a bad file under the cap
gets the server's message. `python -m dashboard --max-upload-mb 1` around the default model."""
from __future__ import annotations

import pytest

from dashboard import ids
from tests.e2e.support import open_page, run_dashboard, skip_reason

pytestmark = pytest.mark.e2e
if skip_reason():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=skip_reason())]
TIMEOUT = 60_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("upload-cap-data")
    for url in run_dashboard(None, data, "--max-upload-mb", "1", start_timeout=120):
        yield url, data


def test_over_cap_upload_is_said_inline_and_the_page_keeps_working(server, tmp_path):
    url, data = server
    big = tmp_path / "big.csv"
    big.write_bytes(b"clean,corrupt,answer,wrong\n" + b"a b,a c, b, c\n" * 150_000)      # 2 MB
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("clean,corrupt,answer,wrong\nZoë,Zoé, é, è\n".encode("latin-1"))
    for page in open_page(url, timeout_ms=TIMEOUT):
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
        assert not page.errors, page.errors
    log = (data / "server.log").read_text()
    assert "Traceback" not in log
    assert " 413 " in log            # the over-cap request itself was refused by the server


def test_over_cap_prompt_dataset_is_said_inline_in_the_explorer(server, tmp_path):
    url, data = server
    big = tmp_path / "prompts.txt"
    big.write_bytes(b"Paris is a city in the country of\n" * 60_000)                   # 2 MB
    for page in open_page(url, timeout_ms=TIMEOUT):
        page.click("a.nav-link:text-is('Neurons & weights')")
        page.set_input_files(f"#{ids.NX_UPLOAD} input[type=file]", str(big))
        page.wait_for_function(f"document.getElementById('{ids.NX_DATASET_STATUS}').innerText.includes('larger')")
        text = page.inner_text(f"#{ids.NX_DATASET_STATUS}")
        assert "prompts.txt (1.9 MB) is larger than the 704 kB limit for prompt datasets on this server" in text, text
        assert "python -m patching neurons --texts" in text
        assert not page.errors, page.errors
