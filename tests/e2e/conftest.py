"""End-to-end tests need Debian's chromium and Playwright; when either is missing they are
skipped, and the reason is printed at the end of the run (also under `pytest -q`)."""
from __future__ import annotations

import shutil


def e2e_skip_reason() -> str | None:
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        return "chromium is not installed (`make browser` installs Debian's chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed in the venv (pip install -r requirements.txt)"
    return None


def pytest_terminal_summary(terminalreporter):
    reason = e2e_skip_reason()
    if reason:
        terminalreporter.write_line(f"end-to-end tests skipped: {reason}", yellow=True)
