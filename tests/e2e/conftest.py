"""End-to-end tests need Debian's chromium and Playwright; when either is missing they are
skipped, and the reason is printed at the end of the run (also under `pytest -q`)."""
from __future__ import annotations



def e2e_skip_reason() -> str | None:
    from tests.e2e.support import skip_reason
    return skip_reason()


def pytest_terminal_summary(terminalreporter):
    reason = e2e_skip_reason()
    if reason:
        terminalreporter.write_line(f"end-to-end tests skipped: {reason}", yellow=True)
