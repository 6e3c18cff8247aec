"""The dashboard's server side: background jobs, fork guard, upload guard, the Celery worker."""
