"""The pipelines plugin: a "Models" page in Airflow's navigation, a "Model" tab on each model's DAGs,
an "Evidence" tab and extra link on each task instance. The pages are pipelines/airflow/ui.py,
served by the Airflow API server under /pipelines.

Airflow finds it through the package's `airflow.plugins` entry point (pyproject.toml): installing
the wheel is enough, no file goes into a plugins folder.

Airflow loads plugins in every task process too (for macros): the app is imported on its first
request, so a task does not pay for FastAPI and the pages.
"""

from __future__ import annotations

import importlib
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink

from pipelines.core.dag_kinds import EVIDENCE_TASKS  # the tasks that record evidence, by DAG kind

URL_PREFIX = "/pipelines"


class LazyApp:
    """An ASGI app that imports the real one when the first request arrives."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.app is None:
            self.app = importlib.import_module(self.module).app
        await self.app(scope, receive, send)


class EvidenceLink(BaseOperatorLink):
    """What a task wrote (result, Data Docs, report, decision, MLflow run, plot), on the Models pages."""

    name = "Evidence"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from urllib.parse import quote

        from airflow.configuration import conf

        if not ti_key.task_id.startswith(EVIDENCE_TASKS):
            return ""  # a disabled link: this task records none
        base = conf.get("api", "base_url", fallback="").rstrip("/")
        parts = (ti_key.dag_id, ti_key.run_id, ti_key.task_id)
        return f"{base}{URL_PREFIX}/evidence/" + "/".join(quote(p, safe="") for p in parts)


class PipelinesPlugin(AirflowPlugin):
    name = "pipelines"
    fastapi_apps = [{"app": LazyApp("pipelines.airflow.ui"), "url_prefix": URL_PREFIX, "name": "pipelines models"}]
    external_views = [
        {
            "name": "Models",
            "href": "pipelines/models",
            "destination": "nav",
            "url_route": "models",
            "nav_top_level": True,
        },
        {"name": "Model", "href": "pipelines/dags/{DAG_ID}", "destination": "dag", "url_route": "model"},
        {
            "name": "Evidence",
            "href": "pipelines/evidence/{DAG_ID}/{RUN_ID}/{TASK_ID}",
            "destination": "task_instance",
            "url_route": "evidence",
        },
    ]
    global_operator_extra_links = [EvidenceLink()]
