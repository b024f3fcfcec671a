"""The worker fixtures (``pipeline_topics``, ``worker_env``, ``start_worker``) moved to ``tests/conftest.py`` so
every test folder can use them; their classes live in ``tests/worker_harness.py``. Re-exported here so that
``from conftest import PipelineTopics, WorkerProcess`` in this folder keeps working."""

from __future__ import annotations

from worker_harness import REPO_ROOT, PipelineTopics, WorkerProcess

__all__ = ["REPO_ROOT", "PipelineTopics", "WorkerProcess"]
