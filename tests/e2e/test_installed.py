"""The package as a platform team installs it: the built wheel in a fresh virtual environment outside
this repository, a project made by `pipelines init`, a model added by `new-model` on CSV files,
trained and scored by `pipelines run`, the project's DAG folder parsed by Airflow's DagBag, and the
Models page served by the plugin Airflow finds through the wheel's `airflow.plugins` entry point.

Nothing here reads this repository's dags/ or expectations/: the project is a temporary folder, the
code is the wheel's copy in the new environment's site-packages.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from pipelines.dev.demo_data import DemoConfig, source_hour_file, write_source
from tests import REPO_ROOT

MODEL = "shop_churn"
HOUR = datetime(2026, 1, 3, 3, tzinfo=UTC)  # the hour the installed champion scores


def uv_command() -> list[str]:
    """uv, as the Makefile finds it: on PATH, else the module pip installed."""
    if found := shutil.which("uv"):
        return [found]
    probe = subprocess.run(["python3", "-m", "uv", "--version"], capture_output=True)
    if probe.returncode != 0:
        pytest.fail("uv is needed to build and install the wheel (`make install` bootstraps it)")
    return ["python3", "-m", "uv"]


def run(command: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new virtual environment holding the built wheel and the locked dependencies (from uv's
    cache: about 20 s with bytecode compiled); its `bin/` folder."""
    root = tmp_path_factory.mktemp("installed")
    assert not root.resolve().is_relative_to(REPO_ROOT)
    uv = uv_command()
    run([*uv, "build", "--wheel", "--out-dir", root / "dist", REPO_ROOT], cwd=root)
    (wheel,) = (root / "dist").glob("pipelines-*.whl")
    constraints = root / "constraints.txt"
    run([*uv, "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "-q", "-o", constraints], REPO_ROOT)
    run([*uv, "venv", "-q", root / "venv", "--python", sys.executable], cwd=root)
    python = root / "venv" / "bin" / "python"
    run([*uv, "pip", "install", "-q", "--compile-bytecode", "--python", python, "-c", constraints, wheel], cwd=root)
    yield root / "venv" / "bin"


def user_env(venv: Path) -> dict[str, str]:
    """A user's shell: none of this test session's settings, the new environment first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINES_", "MLFLOW_"))}
    env["PATH"] = f"{venv}{os.pathsep}{env.get('PATH', '')}"
    env["PIPELINES_TASK_RETRIES"] = "0"
    env["PIPELINES_SOURCE_WAIT_S"] = "0"
    return env


# Run inside the new environment, on the project's embedded Airflow: parse the DAG folder, load the
# plugins, and ask Airflow's own API app, logged in as its admin, for the Models page.
AIRFLOW_CHECK = """
import asyncio, json
from pathlib import Path
import httpx
import pipelines
from pipelines.airflow.embedded import apply_airflow_environment
settings = apply_airflow_environment()
from airflow import plugins_manager
from airflow.api_fastapi.app import create_app
from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(str(settings.project.dags_dir))
info = [p for p in plugins_manager.get_plugin_info() if p["name"] == "pipelines"]
app = create_app()  # Airflow's API server app: it mounts the plugins' FastAPI apps
password = json.loads(Path(SimpleAuthManager.get_generated_password_file()).read_text())["admin"]

async def models_page():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://airflow") as client:
        token = (await client.post("/auth/token", json={"username": "admin", "password": password})).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        return await client.get("/pipelines/models", headers=headers)

page = asyncio.run(models_page())
print(json.dumps({
    "package": pipelines.__file__, "dags": sorted(bag.dag_ids), "import_errors": bag.import_errors,
    "plugin_source": str(info[0]["source"]) if info else None, "plugin_errors": plugins_manager.get_import_errors(),
    "page_status": page.status_code, "page": page.text,
}))
"""


def test_the_wheel_installed_outside_the_repo_runs_a_new_model(venv: Path, tmp_path: Path) -> None:
    env = user_env(venv)
    project = tmp_path / "shop"
    init = run([venv / "pipelines", "init", project], cwd=tmp_path, env=env)
    assert f"wrote {project / 'dags' / 'models' / 'README.md'}" in init.stdout
    assert (project / "expectations").is_dir() and "pipelines new-model" in (project / "README.md").read_text()
    again = subprocess.run(
        [venv / "pipelines", "init", project], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 2 and "exist already" in again.stderr  # never over a project

    # Two days and six hours of CSV files, one per hour, where the project's default home keeps sources.
    source = project / ".pipelines" / "source" / MODEL
    config = DemoConfig(rows_per_hour=300)
    write_source(source, config, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 3, 6, tzinfo=UTC))
    files = "/dt={start:%Y-%m-%d}/hour={start:%H}.csv"
    new = run(
        [
            venv / "pipelines", "new-model", MODEL,
            "--events", f"{MODEL}/events{files}", "--labels", f"{MODEL}/labels{files}",
            "--entity-key", "customer_id", "--timestamp", "event_time", "--label", "churned",
            "--sample-start", "2026-01-01T00:00Z", "--sample-end", "2026-01-02T00:00Z",
        ],
        cwd=project, env=env,
    )  # fmt: skip
    spec_path, dag_file, suite = (
        project / "dags" / "models" / f"{MODEL}.yaml",
        project / "dags" / f"{MODEL}.py",
        project / "expectations" / f"{MODEL}.json",
    )
    for path in (spec_path, dag_file, suite):
        assert f"wrote {path}" in new.stdout
    assert f"home: {project / '.pipelines'} (PIPELINES_HOME unset: the default)" in new.stderr
    assert not (REPO_ROOT / "dags" / "models" / f"{MODEL}.yaml").exists()  # nothing landed in the package's repo
    # The person's edit after reading the comments: two days of history train (the sample is short).
    spec_path.write_text(re.sub(r"window_days: \d+", "window_days: 2", spec_path.read_text()))

    for dag_id, start, end in (
        (f"{MODEL}__train", "2026-01-02T02:00Z", "2026-01-03T02:00Z"),
        (f"{MODEL}__score", HOUR.isoformat(), "2026-01-03T04:00Z"),
    ):
        done = run([venv / "pipelines", "run", dag_id, "--start", start, "--end", end], cwd=project, env=env)
        assert re.search(rf"^{dag_id}  .*  success  ", done.stdout, re.M), done.stdout

    expected = len(pd.read_csv(source_hour_file(source / "events", HOUR)))
    with sqlite3.connect(project / ".pipelines" / "tables.db") as db:
        logged = db.execute(
            "select count(*), min(model_version) from predictions where model_name = ?", (MODEL,)
        ).fetchone()
    assert logged == (expected, "1")  # every event of the hour, scored by the first champion

    checked = run([venv / "python", "-c", AIRFLOW_CHECK], cwd=project, env=env)
    found = json.loads(checked.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).is_relative_to(venv.parent)  # the wheel's copy, not this checkout
    assert found["import_errors"] == {}
    assert found["dags"] == sorted(f"{MODEL}__{kind}" for kind in ("backtest", "monitor", "rollback", "score", "train"))
    # Airflow names where it found the plugin: the wheel's distribution and its airflow.plugins entry point.
    assert found["plugin_source"] is not None and found["plugin_source"].startswith("pipelines==0.1.0: ")
    assert "pipelines.airflow.plugin:PipelinesPlugin" in found["plugin_source"]
    assert "airflow.plugins" in found["plugin_source"]
    assert found["plugin_errors"] == {}
    assert found["page_status"] == 200 and MODEL in found["page"]
