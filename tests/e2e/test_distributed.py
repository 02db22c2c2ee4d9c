"""The scale-out stack for real, on this machine, with the settings docker-compose.yml uses
(pipelines/dev/scaleout.py): Airflow's metadata on PostgreSQL, the CeleryExecutor on Redis with two
workers (`default`, and `train,default`: the train task's queue), its API server, scheduler, DAG
processor and triggerer; an MLflow tracking server on PostgreSQL with artifacts in S3 (moto's
server); the lake on S3 and the tables on PostgreSQL, reached through Airflow connections.

The chain runs under the scheduler: train, score (its worker killed mid-task: the retry completes
on the other worker), monitor, the drift-triggered training, backtest.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import pytest
from sqlalchemy import make_url

from pipelines.dev.scaleout import TRAIN_QUEUE, Stack, mlflow_environment, stack_environment
from pipelines.dev.up import stop_groups
from tests import REPO_ROOT
from tests.conftest import S3Endpoint, needs_server, postgres_database
from tests.e2e.api import free_port, request
from tests.servers import track

MODEL = "demo_churn"
REDIS = os.environ.get("PIPELINES_TEST_REDIS_URL", "redis://127.0.0.1:6379")
WORKERS = {"worker-default": "default", "worker-train": f"{TRAIN_QUEUE},default"}
FIRST_NIGHT = datetime(2026, 1, 3, 2, tzinfo=UTC)
DRIFTED_HOURS = [datetime(2026, 1, 3, 5, tzinfo=UTC), datetime(2026, 1, 3, 6, tzinfo=UTC)]  # drift from 05:00


@dataclass
class Cluster:
    root: Path
    stack: Stack
    env: dict[str, str]
    token: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return self.stack.airflow_url + "/api/v2"

    def log(self, name: str) -> str:
        return (self.root / "logs" / f"{name}.log").read_text(errors="replace")

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        out = (self.root / "logs" / f"{name}.log").open("ab")
        self.processes[name] = track(
            subprocess.Popen(
                list(args),
                env=env or self.env,
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def kill(self, name: str) -> None:
        """The process, its process group and every descendant that left the group, as a lost machine."""
        import psutil

        process = self.processes[name]
        try:
            family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        for member in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()

    def get(self, path: str) -> Any:
        return request(self.api + path, self.token)

    def trigger(self, dag_id: str, run_id: str, logical_date: datetime, conf: dict[str, Any] | None = None) -> None:
        body = {"dag_run_id": run_id, "logical_date": logical_date.isoformat(), "conf": conf or {}}
        request(f"{self.api}/dags/{dag_id}/dagRuns", self.token, body, "POST")

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 900) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.get(f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")
            if run["state"] in {"success", "failed"} or time.monotonic() > deadline:
                return dict(run)
            self.check_alive()
            time.sleep(1)

    def task(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return dict(self.get(f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"))

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None and not name.endswith("(killed)"):
                raise AssertionError(f"{name} exited {process.returncode}:\n{self.log(name)[-3000:]}")

    def ran_on(self, ti_id: str) -> list[str]:
        """The workers whose log shows they executed this task instance."""
        return [name for name in WORKERS if ti_id in self.log(name)]


def redis_db() -> str:
    """An empty Redis database of its own (one of 1-15; data in a database is never touched), or a
    skip naming the server."""
    import redis

    try:
        for db in random.sample(range(1, 16), 15):
            url = f"{REDIS}/{db}"
            if redis.Redis.from_url(url, socket_connect_timeout=5).dbsize() == 0:
                return url
    except (redis.ConnectionError, OSError) as exc:
        needs_server(f"the Redis server at {REDIS}", exc)
    raise AssertionError(f"no empty database on the Redis server at {REDIS}")


def empty_redis_db(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def dag_folder(root: Path) -> Path:
    """A project at `root` as a team deploys one: the demo model's DAG file, its spec with the train
    task on the `train` queue (training.queue), and its suite."""
    folder = root / "dags"
    (folder / "models").mkdir(parents=True)
    (root / "expectations").mkdir()
    shutil.copy(REPO_ROOT / "expectations" / f"{MODEL}.json", root / "expectations")
    shutil.copy(REPO_ROOT / "dags" / f"{MODEL}.py", folder)
    spec = (REPO_ROOT / "dags" / "models" / f"{MODEL}.yaml").read_text()
    assert "  device: auto\n" in spec
    (folder / "models" / f"{MODEL}.yaml").write_text(
        spec.replace("  device: auto\n", "  device: auto\n  queue: train\n")
    )
    return folder


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: S3Endpoint) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("distributed")
    (root / "logs").mkdir()
    with contextlib.ExitStack() as stack:
        urls = [make_url(stack.enter_context(postgres_database(f"dist_{part}"))) for part in ("af", "pl", "ml")]
        broker = redis_db()
        stack.callback(empty_redis_db, broker)  # the broker's queues and results go with the stack
        airflow_port, mlflow_port = free_port(), free_port()
        suffix = secrets.token_hex(4)
        scaleout = Stack(
            postgres_host=str(urls[0].host),
            postgres_port=int(urls[0].port or 5432),
            postgres_user=str(urls[0].username),
            postgres_password=urls[0].password or "",
            redis_url=broker,
            s3_endpoint=s3_endpoint.url,
            s3_access_key=s3_endpoint.options.access_key_id or "",
            s3_secret_key=s3_endpoint.options.secret_access_key or "",
            mlflow_url=f"http://127.0.0.1:{mlflow_port}",
            airflow_url=f"http://localhost:{airflow_port}",
            execution_api_url=f"http://localhost:{airflow_port}/execution/",
            secret=secrets.token_hex(16),
            airflow_database=str(urls[0].database),
            tables_database=str(urls[1].database),
            mlflow_database=str(urls[2].database),
            lake=f"s3://lake-{suffix}/pipelines",
            mlflow_bucket=f"mlflow-{suffix}",
        )
        home = root / "home"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINES_", "MLFLOW_"))}
        env |= stack_environment(scaleout) | {
            "PIPELINES_HOME": str(home),
            "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dag_folder(root)),
            "PIPELINES_PROJECT": str(root),  # every component finds the project's suites (the plugin: its entry point)
            "AIRFLOW__API__PORT": str(airflow_port),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            # A killed worker's task is declared lost after this long (Airflow's default is 300 s).
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "PIPELINES_TASK_RETRIES": "1",
            "PIPELINES_TASK_RETRY_DELAY_S": "5",
            # The runs the scheduler makes for "now" have no data (the demo's is in January 2026): fail them fast.
            "PIPELINES_SOURCE_WAIT_S": "0",
            "GIT_PYTHON_REFRESH": "quiet",
        }
        cluster = Cluster(root, scaleout, env)

        from pipelines.dev.demo import DEMO_END, DEMO_START, DRIFT_FROM
        from pipelines.dev.demo_data import DemoConfig, write_source

        write_source(
            home / "source" / MODEL, DemoConfig(label_delay_hours=6, drift_from=DRIFT_FROM), DEMO_START, DEMO_END
        )
        init = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "init-stack"],
            env=env | mlflow_environment(scaleout),
            cwd=root,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert init.returncode == 0, init.stdout[-3000:] + init.stderr[-3000:]
        try:
            mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
            cluster.start(
                "mlflow",
                mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
                env=env | mlflow_environment(scaleout),
            )  # fmt: skip
            airflow = str(Path(sys.executable).with_name("airflow"))
            for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
                cluster.start(component, airflow, component)
            for name, queues in WORKERS.items():
                start_worker(cluster, name, queues)
            wait_until_ready(cluster)
            yield cluster
        finally:
            stop_groups(cluster.processes)  # what `pipelines up` does on Ctrl-C: groups, then strays
            print(f"distributed stack logs under {root / 'logs'}")


def start_worker(cluster: Cluster, name: str, queues: str) -> None:
    airflow = str(Path(sys.executable).with_name("airflow"))
    env = cluster.env | {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}  # one host, two log servers
    cluster.start(name, airflow, "celery", "worker", "--queues", queues, "--celery-hostname", f"{name}@%h", env=env)


def wait_until_ready(cluster: Cluster, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    password = ""
    while time.monotonic() < deadline:
        cluster.check_alive()
        time.sleep(1)
        try:
            health = request(cluster.api + "/monitor/health")
        except (OSError, ValueError):
            continue
        components = ("metadatabase", "scheduler", "dag_processor", "triggerer")
        if not all(health.get(c, {}).get("status") == "healthy" for c in components):
            continue
        if not all(re.search(rf"{name}@\S+ ready", cluster.log(name)) for name in WORKERS):
            continue
        password = json.loads((Path(cluster.env["PIPELINES_HOME"]) / "passwords.json").read_text())["admin"]
        login = {"username": "admin", "password": password}
        cluster.token = request(cluster.stack.airflow_url + "/auth/token", payload=login, method="POST")["access_token"]
        try:
            if all(cluster.get(f"/dags/{MODEL}__{kind}") for kind in ("train", "score", "monitor", "backtest")):
                for kind in ("train", "score", "monitor", "backtest"):
                    request(f"{cluster.api}/dags/{MODEL}__{kind}", cluster.token, {"is_paused": False}, "PATCH")
                return
        except OSError:
            continue
    raise AssertionError("the distributed stack did not come up:\n" + "\n".join(
        f"--- {name}\n{cluster.log(name)[-1500:]}" for name in cluster.processes
    ))  # fmt: skip


def wait_for_scheduled_runs(cluster: Cluster) -> None:
    """The runs the scheduler made for "now" on unpausing end fast (no data): let them end."""
    deadline = time.monotonic() + 300
    for kind in ("train", "score", "backtest"):
        while time.monotonic() < deadline:
            runs = cluster.get(f"/dags/{MODEL}__{kind}/dagRuns?run_type=scheduled&state=queued&state=running")
            if not runs["total_entries"]:
                break
            time.sleep(1)


def test_the_train_task_runs_on_the_train_queue_and_its_model_lands_in_s3(cluster: Cluster) -> None:
    wait_for_scheduled_runs(cluster)
    cluster.trigger(f"{MODEL}__train", "dist_train_v1", FIRST_NIGHT)
    run = cluster.wait_run(f"{MODEL}__train", "dist_train_v1")
    assert run["state"] == "success", run
    train = cluster.task(f"{MODEL}__train", "dist_train_v1", "train")
    assert train["queue"] == TRAIN_QUEUE
    assert cluster.ran_on(train["id"]) == ["worker-train"]  # the only worker serving `train`
    ingest = cluster.task(f"{MODEL}__train", "dist_train_v1", "ingest_window")
    assert ingest["queue"] == "default" and len(cluster.ran_on(ingest["id"])) == 1

    import boto3
    from mlflow import MlflowClient

    # Both URIs: a module run earlier in this process may have set the process's registry URI.
    server = cluster.stack.mlflow_url
    version = MlflowClient(tracking_uri=server, registry_uri=server).get_model_version_by_alias(MODEL, "champion")
    assert version.version == "1"
    s3 = boto3.client(
        "s3",
        endpoint_url=cluster.stack.s3_endpoint,
        aws_access_key_id=cluster.stack.s3_access_key,
        aws_secret_access_key=cluster.stack.s3_secret_key,
        region_name="us-east-1",
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=cluster.stack.mlflow_bucket).get("Contents", [])]
    assert any(key.endswith("/MLmodel") for key in keys), keys[:20]
    lake_bucket = urlparse(cluster.stack.lake).netloc
    assert s3.list_objects_v2(Bucket=lake_bucket, Prefix=f"pipelines/{MODEL}/raw/")["KeyCount"] > 0


def test_a_score_task_whose_worker_is_killed_completes_on_the_other_worker(cluster: Cluster) -> None:
    hour = DRIFTED_HOURS[0]
    run_id = "dist_score_killed"
    cluster.trigger(f"{MODEL}__score", run_id, hour + timedelta(hours=1))
    # Kill the worker once the task runs (a task killed while queued is not lost to the scheduler's
    # heartbeat check but waits for task_queued_timeout); the scorer's imports alone take seconds.
    deadline, victim = time.monotonic() + 600, None
    while victim is None and time.monotonic() < deadline:
        score = cluster.task(f"{MODEL}__score", run_id, "score")
        assert score["state"] not in {"success", "failed"}, (
            f"the score task ended before its worker was killed: {score}"
        )
        if score["state"] == "running" and (workers := cluster.ran_on(score["id"])):
            (victim,) = workers
        else:
            cluster.check_alive()
            time.sleep(0.2)
    assert victim, "no worker took the score task"
    cluster.kill(victim)
    cluster.processes[f"{victim} (killed)"] = cluster.processes.pop(victim)
    try:
        run = cluster.wait_run(f"{MODEL}__score", run_id)
        assert run["state"] == "success", run
        score = cluster.task(f"{MODEL}__score", run_id, "score")
        assert score["try_number"] == 2, score  # the first try was lost with its worker
        (survivor,) = [name for name in WORKERS if name != victim]
        retry = f"task_id='score', dag_id='{MODEL}__score', run_id='{run_id}', try_number=2"
        assert retry in cluster.log(survivor) and retry not in cluster.log(victim)
    finally:
        start_worker(cluster, victim, WORKERS[victim])  # back for the next tests, as a supervisor would

    # The killed try wrote nothing the retry did not make whole: the log holds the lake's rows, once each.
    from sqlalchemy import create_engine, text

    from pipelines.storage.lake import S3Options, open_lake, partition_key, read_partition

    options = S3Options(
        cluster.stack.s3_endpoint, cluster.stack.s3_access_key, cluster.stack.s3_secret_key, None, "us-east-1"
    )
    frame, _ = read_partition(open_lake(cluster.stack.lake, options), partition_key(MODEL, "raw", hour))
    lake_rows = sorted(zip(frame["customer_id"].astype(str), frame["event_time"].dt.tz_convert(UTC), strict=True))
    engine = create_engine(cluster.stack.postgres_url(cluster.stack.tables_database))
    with engine.connect() as db:
        logged = db.execute(
            text("select entity_id, as_of from predictions where model_name = :m and as_of >= :s and as_of < :e"),
            {"m": MODEL, "s": hour, "e": hour + timedelta(hours=1)},
        ).all()
    engine.dispose()
    assert len(lake_rows) > 0 and sorted((e, a.astimezone(UTC)) for e, a in logged) == lake_rows


def test_drift_under_the_scheduler_retrains_on_the_train_worker_then_a_backtest_runs(cluster: Cluster) -> None:
    hour = DRIFTED_HOURS[1]
    cluster.trigger(f"{MODEL}__score", "dist_score_2", hour + timedelta(hours=1))
    assert cluster.wait_run(f"{MODEL}__score", "dist_score_2")["state"] == "success"

    deadline, trainings = time.monotonic() + 900, []
    while time.monotonic() < deadline:
        trainings = cluster.get(f"/dags/{MODEL}__train/dagRuns?run_type=asset_triggered")["dag_runs"]
        if trainings and all(t["state"] in {"success", "failed"} for t in trainings):
            break
        cluster.check_alive()
        time.sleep(1)
    monitors = cluster.get(f"/dags/{MODEL}__monitor/dagRuns?run_type=asset_triggered")["dag_runs"]
    assert monitors and all(m["state"] == "success" for m in monitors), monitors
    assert len(trainings) == 1 and trainings[0]["state"] == "success", trainings
    train = cluster.task(f"{MODEL}__train", trainings[0]["dag_run_id"], "train")
    assert cluster.ran_on(train["id"]) == ["worker-train"]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=cluster.stack.mlflow_url)
    experiment = client.get_experiment_by_name(f"pipelines/{MODEL}")
    (drift_run,) = client.search_runs([experiment.experiment_id], "tags.trigger = 'drift'")
    assert drift_run.info.artifact_uri.startswith("mlflow-artifacts:")  # through the server, into S3

    cluster.trigger(f"{MODEL}__backtest", "dist_backtest", datetime(2026, 1, 4, 4, tzinfo=UTC))
    assert cluster.wait_run(f"{MODEL}__backtest", "dist_backtest")["state"] == "success"
    from sqlalchemy import create_engine, text

    engine = create_engine(cluster.stack.postgres_url(cluster.stack.tables_database))
    with engine.connect() as db:
        cohorts = db.execute(
            text("select distinct cohort, model_version from backtest_metrics where dag_run_id = 'dist_backtest'")
        ).all()
    engine.dispose()
    assert ("2026-01-03", "1") in [(str(c)[:10], v) for c, v in cohorts]


def test_backfilling_three_hours_twice_gives_the_same_rows(cluster: Cluster) -> None:
    """Airflow's own backfill (REST API, executed by the scheduler on the Celery workers) over three
    score intervals; the second backfill re-runs the completed runs and must change no logged
    prediction. Here, on PostgreSQL: Airflow refuses backfills on SQLite under concurrent access
    (its answer is 503, 'Please use PostgreSQL or MySQL', and a half-made backfill can stop the
    scheduler), so the embedded `pipelines up` reruns intervals with `pipelines run` instead."""
    # The monitor would follow each score run (drift was the previous test's story): paused here.
    request(f"{cluster.api}/dags/{MODEL}__monitor", cluster.token, {"is_paused": True}, "PATCH")
    hours = [datetime(2026, 1, 4, h, tzinfo=UTC) for h in (12, 13, 14)]  # the three intervals' starts

    def backfill(reprocess: str) -> dict[str, str]:
        body = {
            "dag_id": f"{MODEL}__score",
            # Airflow places a backfill's dates on interval starts: runs for 12:00-13:00 ... 14:00-15:00.
            "from_date": hours[0].isoformat(),
            "to_date": hours[-1].isoformat(),
            "reprocess_behavior": reprocess,
            "max_active_runs": 1,
        }
        created = request(f"{cluster.api}/backfills", cluster.token, body, "POST")
        deadline = time.monotonic() + 600
        while not cluster.get(f"/backfills/{created['id']}")["completed_at"]:
            assert time.monotonic() < deadline, f"backfill {created['id']} not completed after 600 s"
            cluster.check_alive()
            time.sleep(1)
        runs = cluster.get(f"/dags/{MODEL}__score/dagRuns?run_type=backfill&limit=100")["dag_runs"]
        return {r["dag_run_id"]: r["state"] for r in runs}

    from sqlalchemy import create_engine, text

    from pipelines.storage.lake import S3Options, open_lake, partition_key, read_partition

    def logged() -> tuple[dict[datetime, int], list[Any]]:
        """Per-hour counts of the three hours' logged predictions, and every column of every row."""
        engine = create_engine(cluster.stack.postgres_url(cluster.stack.tables_database))
        with engine.connect() as db:
            rows = db.execute(
                text(
                    "select * from predictions where model_name = :m and as_of >= :s and as_of < :e "
                    "order by entity_id, as_of"
                ),
                {"m": MODEL, "s": hours[0], "e": hours[-1] + timedelta(hours=1)},
            ).all()
        engine.dispose()
        counts: dict[datetime, int] = {}
        for row in rows:
            hour = row.as_of.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
            counts[hour] = counts.get(hour, 0) + 1
        return counts, [tuple(row) for row in rows]

    first = backfill("none")
    assert sorted(first.values()) == ["success"] * 3, first
    counts, rows = logged()
    options = S3Options(
        cluster.stack.s3_endpoint, cluster.stack.s3_access_key, cluster.stack.s3_secret_key, None, "us-east-1"
    )
    lake = open_lake(cluster.stack.lake, options)
    for hour in hours:
        frame, _ = read_partition(lake, partition_key(MODEL, "raw", hour))
        assert counts.get(hour) == len(frame) > 0, hour

    second = backfill("completed")
    assert second == first  # the same three runs, re-run
    assert logged() == (counts, rows)
