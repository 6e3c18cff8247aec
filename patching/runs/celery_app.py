"""The one Celery app config: the dashboard's web server (`--jobs celery`), its workers
(`python -m dashboard worker`) and the CLI's sharded sweeps (`sweep --shards N --redis-url`).
It lives in the engine so that the CLI, which never imports the dashboard, sends its shards to
the same workers with the same settings; `dashboard/server/celery.py` re-exports it.

>>> celery_app("http://x")
Traceback (most recent call last):
...
ValueError: --redis-url must be a Redis URL like redis://HOST:6379/0, not 'http://x'
"""
from __future__ import annotations


def celery_app(redis_url: str, name: str = "patchboard"):
    """The Celery app the web server, the workers and the CLI share: Redis as broker and result
    backend, one job at a time per pool process (long jobs; no prefetching a second behind the first).

    >>> celery_app("redis://127.0.0.1:6379/0").conf.worker_prefetch_multiplier   # doctest: +SKIP
    1
    """
    if not redis_url or not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"--redis-url must be a Redis URL like redis://HOST:6379/0, not {redis_url!r}")
    try:
        from celery import Celery
        import redis  # noqa: F401
    except ImportError:
        raise ValueError("Celery jobs need the 'celery' and 'redis' packages, which are not installed "
                         "here; install them (pip install -r requirements.txt) or use --jobs diskcache") from None
    app = Celery(name, broker=redis_url, backend=redis_url)
    app.conf.update(
        worker_prefetch_multiplier=1,
        task_acks_late=False,             # a killed (cancelled) job is not redelivered to another worker;
                                          # a sharded sweep's client retries a lost shard itself
        broker_connection_retry_on_startup=True,
        result_expires=24 * 3600,
        worker_hijack_root_logger=False,
        broker_transport_options={"visibility_timeout": 12 * 3600},
    )
    return app
