"""docs/notebook.md cannot rot: its ```python blocks run, in order, in one namespace, on the
shipped model (issue 21), and what they show is checked here too."""
from __future__ import annotations

import math
import re
import time
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "notebook.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(text: str) -> list[str]:
    """The ```python blocks of a markdown text, in order."""
    return [m.group(1) for m in BLOCK.finditer(text)]


def test_blocks_are_found_in_order():
    assert blocks("a\n```python\nx = 1\n```\n```\nnot python\n```\n```python\ny = x\n```\n") == ["x = 1\n", "y = x\n"]


def test_the_notebook_walkthrough_runs():
    code = blocks(DOC.read_text(encoding="utf-8"))
    assert len(code) >= 7                      # load, sweep, plot, attention, path, attribution, circuit, own model
    namespace: dict = {"__name__": "notebook_doc"}
    start, cpu = time.perf_counter(), time.process_time()
    for i, block in enumerate(code):
        exec(compile(block, f"{DOC.name} block {i + 1}", "exec"), namespace)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    heads, mine = namespace["heads"], namespace["mine"]
    assert "top cells" in heads._repr_html_()
    assert mine.name == "my-model" and mine.source == "object"
    assert namespace["bridge_model"].bridge is mine.bridge
    assert math.isfinite(namespace["circuit"].faithfulness)
    # CPU time, not wall time: the test machines are shared, and a busy one stretches the wall clock
    assert cpu < 60, f"the walk-through took {cpu:.0f} s of CPU ({seconds:.0f} s wall); keep it under a minute"


def test_readme_links_the_walkthrough():
    readme = (DOC.parents[1] / "README.md").read_text(encoding="utf-8")
    assert "docs/notebook.md" in readme
