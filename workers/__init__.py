"""The distributed and command-line side of deepscan: settings, CLI, Celery app, tasks, producer."""
