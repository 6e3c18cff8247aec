"""What every tab's `register(app, ctx)` is given: the model registry, the run store and the data dir.

>>> ctx = Context(registry, store, Path(".patchboard"))        # doctest: +SKIP
>>> ctx.run("12").info.id                                      # doctest: +SKIP
12
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from patching.runs.store import Run, RunStore

from dashboard.forms import check_model, parse_run_id


@dataclass(frozen=True)
class Context:
    """The app's collaborators, passed in (`create_app`), never module-level."""
    registry: object                 # patching.model.loading.ModelRegistry (or a test double)
    store: RunStore
    data_dir: Path
    max_memory_mb: float | None = None   # one batch of an exact sweep (and its estimate); None: the free-memory share
    shards: object | None = None     # dashboard.server.shards.CeleryShards (a server with --redis-url), or None
    celery_jobs: bool = False        # the Run's own job runs on a worker (--jobs celery)

    def model(self, name: str | None):
        """A model this server offers, loaded (ValueError naming the offered ones otherwise)."""
        return self.registry.get(check_model(self.registry, name))

    def run(self, run_id) -> Run:
        """The stored run a page value names (a number only; ValueError otherwise)."""
        return self.store.get(parse_run_id(run_id))

    def find_run(self, run_id) -> Run | None:
        """The stored run, or None when it is gone (deleted meanwhile) or the value is no run number."""
        try:
            return self.run(run_id)
        except ValueError:
            return None
