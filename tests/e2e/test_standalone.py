"""End to end with real servers, as a user runs it: `pipelines demo`, then `pipelines up` (Airflow
standalone with scheduler, DAG processor, triggerer and API server, plus the MLflow server) on a
fresh home. A score run triggered through Airflow's REST API is executed by the scheduler's
LocalExecutor and its predictions land in the table.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import pytest

from tests import REPO_ROOT
from tests.e2e.api import free_port, request
from tests.e2e.processes import alive, descendants
from tests.servers import track

RUN_ID = "e2e_2026-01-03T12"
CHROMIUM = "/usr/bin/chromium"


@dataclass(frozen=True)
class Stack:
    home: Path
    airflow_url: str
    mlflow_url: str
    password: str
    status: dict[str, Any]
    up: subprocess.Popen[str]


def clean_env(home: Path) -> dict[str, str]:
    """The user's environment: none of this test session's Airflow, MLflow or pipelines settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINES_", "MLFLOW_"))}
    env["PIPELINES_HOME"] = str(home)
    # The run the scheduler makes for "now" has no data and never will (the demo's data is in January
    # 2026): fail it fast, instead of waiting for its source while the score DAG's one active run slot
    # keeps the runs this test triggers queued.
    env["PIPELINES_TASK_RETRIES"] = "0"
    env["PIPELINES_SOURCE_WAIT_S"] = "0"
    # A 500 from the API server carries its stack trace, which the failing test then prints.
    env["AIRFLOW__API__EXPOSE_STACKTRACE"] = "True"
    return env


def pipelines_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("e2e") / "home"
    env = clean_env(home)
    demo = pipelines_cli(env, "demo", "--reset")
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    status = pipelines_cli(env, "status", "--json")
    assert status.returncode == 0, status.stderr[-3000:]

    airflow_port, mlflow_port = free_port(), free_port()
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "up",
            "--airflow-port",
            str(airflow_port),
            "--mlflow-port",
            str(mlflow_port),
            "--no-live-demo",  # the tests below trigger their own January runs; the feed has its own test
        ],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    track(up)
    try:
        printed = ""
        assert up.stdout is not None
        for line in up.stdout:  # ends when `up` exits, which fails the test below
            printed += line
            if "Ctrl-C" in line:
                break
        match = re.search(r"login: admin / (\S+)", printed)
        assert match, f"`pipelines up` did not print a login:\n{printed}"
        yield Stack(
            home,
            f"http://localhost:{airflow_port}",
            f"http://localhost:{mlflow_port}",
            match.group(1),
            json.loads(status.stdout),
            up,
        )
    finally:
        up.send_signal(signal.SIGTERM)  # `pipelines up` stops both servers and waits for them
        try:
            up.wait(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(up.pid, signal.SIGKILL)  # whatever of its process group is still there


def test_demo_leaves_a_full_status(stack: Stack) -> None:
    """What `make demo` prints at its end: a champion, predictions, labels, backtest and drift."""
    (model,) = [m for m in stack.status["models"] if m["model"] == "demo_churn"]
    assert model["champion_version"] == "2"  # the second training met the gate
    assert model["predictions_last_24h"] > 0 and model["labels_last_24h"] > 0 and model["backtest_metrics"] > 0
    # The second backtest: a cohort per version (v1 served 2026-01-03, the promoted v2 the next night).
    assert sorted((b["cohort"], b["model_version"], b["scored_by"]) for b in model["latest_backtest"]) == [
        ("2026-01-03", "1", "logged"),
        ("2026-01-04", "2", "logged"),
    ]
    assert all(b["auc"] > 0.7 for b in model["latest_backtest"])
    assert model["last_validation"]["success"] is True
    assert Path(urlparse(model["last_drift_report"]["path"]).path).exists()
    # The generator's drift knob moves exactly these columns from 05:00; the last report is at 08:00.
    assert sorted(model["last_drift_report"]["drifted_columns"]) == ["monthly_charges", "plan", "support_calls"]
    # 05:00 and 06:00 drifted: the policy (2 of 4) asked for a retraining; 07:00 is held back by the cooldown.
    assert model["last_drift_report"]["verdict"]["reason"].startswith("cooldown until 2026-01-04T07:00:00")


def test_demo_sales_is_a_regression_with_its_own_metrics(stack: Stack) -> None:
    (model,) = [m for m in stack.status["models"] if m["model"] == "demo_sales"]
    assert model["task"] == "regression" and model["champion_version"] == "2"  # the second training met the gate
    assert {b["cohort"] for b in model["latest_backtest"]} == {"2025-12-15", "2025-12-16", "2025-12-17"}
    assert all(b["r2"] > 0.8 and "auc" not in b for b in model["latest_backtest"])
    quality = model["last_quality_report"]
    assert quality["interval_start"].startswith("2025-12-15") and quality["rows"] == 200
    assert Path(urlparse(quality["path"]).path).exists()


def test_both_uis_answer(stack: Stack) -> None:
    assert "<html" in request(stack.airflow_url + "/").lower()
    assert request(stack.airflow_url + "/api/v2/monitor/health")["scheduler"]["status"] == "healthy"
    assert "<html" in request(stack.mlflow_url + "/").lower()


def test_the_demo_runs_task_logs_read_through_the_api(stack: Stack) -> None:
    """The GATE and DRIFT lines of the demo's dag.test() runs, as the UI's log view fetches them."""
    token = request(
        stack.airflow_url + "/auth/token", payload={"username": "admin", "password": stack.password}, method="POST"
    )["access_token"]
    api = stack.airflow_url + "/api/v2/dags"
    gate = f"{api}/demo_churn__train/dagRuns/{quote('manual__2026-01-04T02:00:00+00:00', safe='')}/taskInstances/gate"
    lines = [line["event"] for line in request(f"{gate}/logs/1?full_content=true", token)["content"]]
    assert any(line.startswith("GATE demo_churn v2 vs champion v1: PROMOTE") for line in lines), lines
    runs = request(f"{api}/demo_churn__monitor/dagRuns?limit=100&order_by=run_after", token)["dag_runs"]
    drift = f"{api}/demo_churn__monitor/dagRuns/{quote(runs[0]['dag_run_id'], safe='')}/taskInstances/drift_report"
    lines = [line["event"] for line in request(f"{drift}/logs/1?full_content=true", token)["content"]]
    assert any(line.startswith("DRIFT report") for line in lines), lines


def test_the_models_pages_refuse_anonymous_requests(stack: Stack) -> None:
    for path in ("/pipelines/models", "/pipelines/models/demo_churn", "/pipelines/lake/demo_churn/predictions"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            request(stack.airflow_url + path)
        assert refused.value.code == 401, path
    # A browser is sent to Airflow's login, and comes back to the page after it.
    page = urllib.request.Request(stack.airflow_url + "/pipelines/models", headers={"Accept": "text/html"})
    with urllib.request.urlopen(page, timeout=120) as answer:
        assert "/auth/login?next=" in answer.url and "pipelines%2Fmodels" in answer.url


def browser() -> Any:
    """Debian's Chromium, driven by Playwright (never a downloaded browser)."""
    from tests.conftest import needs_server

    if not Path(CHROMIUM).exists():
        needs_server(f"Chromium at {CHROMIUM} (apt-get install chromium)", FileNotFoundError(CHROMIUM))
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    return playwright, playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
    )


@contextlib.contextmanager
def cross_site_page(target: str) -> Iterator[str]:
    """Another site's page (a server on another port of localhost: another origin, but the same site
    for cookies, so the browser sends its Airflow session along) that posts a rollback form to
    `target` as it loads."""
    import http.server
    import threading

    html = (
        f'<form id="f" method="post" action="{target}"><input name="version" value="1">'
        '<input name="reason" value="cross-site"></form><script>document.getElementById("f").submit()</script>'
    ).encode()

    class EvilPage(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EvilPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"  # Airflow is at localhost too
    finally:
        server.shutdown()
        server.server_close()


def plugin_frame(page: Any, path: str) -> Any:
    """The Models page's iframe inside the Airflow UI, once its content has loaded."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for frame in page.frames:
            if frame.url.split("?")[0].endswith(path) and frame.query_selector("h1"):
                return frame
        page.wait_for_timeout(500)
    raise AssertionError(f"no frame of {path} in {[f.url for f in page.frames]}")


def test_the_models_pages_in_a_browser(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Log in to Airflow, open Models from its navigation and a model's tab on its DAG: the champion,
    the backtest chart and a drift report that opens; screenshots are kept."""
    shots = Path(os.environ.get("PIPELINES_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    expected = {m["model"]: m["champion_version"] for m in stack.status["models"]}
    playwright, chromium = browser()
    try:
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(stack.airflow_url + "/pipelines/models", timeout=120_000)
        page.fill("input[name=username]", "admin", timeout=120_000)
        page.fill("input[name=password]", stack.password)
        page.click("button[type=submit]")
        page.wait_for_url("**/pipelines/models", timeout=120_000)  # the login sends the user back

        page.goto(stack.airflow_url + "/plugin/models", timeout=120_000)  # the "Models" navigation entry
        models = plugin_frame(page, "/pipelines/models")
        page.screenshot(path=str(shots / "models.png"), full_page=True)
        rows = {
            row.query_selector("td a").inner_text(): row.query_selector("td.champion").inner_text()
            for row in models.query_selector_all("tr.model")
        }
        assert rows == {name: f"v{version}" for name, version in expected.items()}

        page.goto(stack.airflow_url + "/dags/demo_churn__score/plugin/model", timeout=120_000)  # the DAG's tab
        model = plugin_frame(page, "/pipelines/models/demo_churn")
        page.screenshot(path=str(shots / "demo_churn.png"), full_page=True)
        assert model.inner_text("#champion").split()[:2] == ["champion", f"v{expected['demo_churn']}"]
        # The backtest: a cohort per version, each version its own line.
        assert len(model.query_selector_all("svg.chart circle")) >= 2
        assert len(model.query_selector_all("svg.chart polyline")) >= 2
        assert len(model.query_selector_all("svg.chart rect")) >= 6  # a drift bar per monitored window
        report = model.query_selector("a[href*='reports/drift/']").get_attribute("href")
        opened = page.request.get(urllib.parse.urljoin(model.url, report))
        assert opened.status == 200 and "Drifted Columns" in opened.text()  # Evidently's drift report
        assert "sandbox" in opened.headers["content-security-policy"]  # its scripts cannot act as the user
        # Nothing outside the lake, however the path is spelled.
        for escape_attempt in ("../tables.db", "..%2Ftables.db", "demo_churn/..%2F..%2Ftables.db"):
            assert page.request.get(f"{stack.airflow_url}/pipelines/lake/{escape_attempt}").status == 404

        # A task's extra link opens what it wrote: the validation result of a demo score run.
        api = stack.airflow_url + "/api/v2/dags/demo_churn__score/dagRuns"
        run = page.request.get(f"{api}?limit=1&order_by=logical_date").json()["dag_runs"][0]["dag_run_id"]
        links = page.request.get(f"{api}/{urllib.parse.quote(run, safe='')}/taskInstances/validate_interval/links")
        evidence = links.json()["extra_links"]["Evidence"]
        page.goto(evidence, timeout=120_000)
        page.screenshot(path=str(shots / "evidence.png"), full_page=True)
        result = page.query_selector("a[href*='/validation/']")
        assert result is not None, page.content()
        assert "passed" in result.inner_text()
        assert page.request.get(urllib.parse.urljoin(page.url, result.get_attribute("href"))).json()["success"]

        # An action: the dry-run training button triggers the model's train DAG as this user.
        page.goto(stack.airflow_url + "/dags/demo_orders__score/plugin/model", timeout=120_000)
        plugin_frame(page, "/pipelines/models/demo_orders").click("text=Trigger a dry-run training")
        done = plugin_frame(page, "/pipelines/models/demo_orders/dry-run")
        run_id = done.get_attribute("#triggered", "data-run")
        triggered = page.request.get(f"{stack.airflow_url}/api/v2/dags/demo_orders__train/dagRuns/{run_id}").json()
        assert triggered["conf"] == {"dry_run": True}

        # The same logged-in browser on another site's page that posts a rollback on its own: refused,
        # and no rollback run exists afterwards.
        rollbacks = f"{stack.airflow_url}/api/v2/dags/demo_churn__rollback/dagRuns"
        runs_before = page.request.get(rollbacks).json()["total_entries"]
        with cross_site_page(f"{stack.airflow_url}/pipelines/models/demo_churn/rollback") as evil:
            with page.expect_response(lambda r: r.url.endswith("/demo_churn/rollback")) as posted:
                page.goto(evil, timeout=120_000)
            assert posted.value.status == 403, posted.value.text()
            assert "cross-site request refused" in posted.value.text()
        assert page.request.get(rollbacks).json()["total_entries"] == runs_before
    finally:
        chromium.close()
        playwright.stop()
    print(f"screenshots: {shots}")


def test_scheduler_executes_a_run_triggered_through_the_api(stack: Stack) -> None:
    api = stack.airflow_url + "/api/v2"
    token = request(
        stack.airflow_url + "/auth/token", payload={"username": "admin", "password": stack.password}, method="POST"
    )["access_token"]
    request(f"{api}/dags/demo_churn__score", token, {"is_paused": False}, "PATCH")
    created = request(
        f"{api}/dags/demo_churn__score/dagRuns",
        token,
        {"logical_date": "2026-01-03T12:00:00Z", "dag_run_id": RUN_ID},
        "POST",
    )
    assert created["data_interval_start"].startswith("2026-01-03T11:00:00")

    deadline, state = time.monotonic() + 420, "queued"
    while time.monotonic() < deadline and state not in {"success", "failed"}:
        time.sleep(1)
        state = request(f"{api}/dags/demo_churn__score/dagRuns/{RUN_ID}", token)["state"]
    tasks = request(f"{api}/dags/demo_churn__score/dagRuns/{RUN_ID}/taskInstances", token)["task_instances"]
    assert state == "success", [(t["task_id"], t["state"]) for t in tasks]
    assert {t["task_id"]: t["state"] for t in tasks} == {
        "wait_for_source": "success",
        "ingest_interval": "success",
        "validate_interval": "success",
        "score": "success",
    }

    with sqlite3.connect(stack.home / "tables.db") as connection:
        (rows,) = connection.execute("select count(*) from predictions where dag_run_id = ?", (RUN_ID,)).fetchone()
    manifest = json.loads((stack.home / "lake/demo_churn/raw/dt=2026-01-03/hour=11/_manifest.json").read_text())
    assert rows == manifest["rows"] > 0

    # Honest logs: a task that succeeded logged no ERROR line (the task runner logs a task's stderr,
    # such as a progress bar, as ERROR), and it logged its one outcome line.
    for task_id in ("wait_for_source", "ingest_interval", "validate_interval", "score"):
        logged = request(f"{api}/dags/demo_churn__score/dagRuns/{RUN_ID}/taskInstances/{task_id}/logs/1", token)
        entries = [e for e in logged["content"] if isinstance(e, dict)]
        errors = [e.get("event") for e in entries if str(e.get("level", "")).lower() in {"error", "critical"}]
        assert errors == [], (task_id, errors)
        assert any(f"OUTCOME demo_churn__score.{task_id}" in str(e.get("event")) for e in entries), task_id


def test_promotion_waits_for_a_human_approval_through_the_api(stack: Stack) -> None:
    """Roll back with the CLI, retrain with `require_approval`; the gate's verdict waits in Airflow's
    human-in-the-loop task until an admin approves it through the REST API, which moves `champion`."""
    from pipelines.storage.registry import APPROVE

    env = clean_env(stack.home)
    rolled_back = pipelines_cli(env, "rollback", "demo_churn", "1", "--reason", "e2e: retrain under approval")
    assert rolled_back.returncode == 0, rolled_back.stderr[-3000:]

    api, run_id = stack.airflow_url + "/api/v2", "e2e_train_approval"
    token = request(
        stack.airflow_url + "/auth/token", payload={"username": "admin", "password": stack.password}, method="POST"
    )["access_token"]
    request(f"{api}/dags/demo_churn__train", token, {"is_paused": False}, "PATCH")
    request(
        f"{api}/dags/demo_churn__train/dagRuns",
        token,
        # 03:00, not the demo's 02:00 (one run per logical date), over the same night's window.
        {"logical_date": "2026-01-04T03:00:00Z", "dag_run_id": run_id, "conf": {"require_approval": True}},
        "POST",
    )
    run_url = f"{api}/dags/demo_churn__train/dagRuns/{run_id}"

    def task_states() -> dict[str, str]:
        return {t["task_id"]: t["state"] for t in request(f"{run_url}/taskInstances", token)["task_instances"]}

    deadline, states = time.monotonic() + 600, task_states()
    while time.monotonic() < deadline and states.get("approve") != "awaiting_input":
        assert request(run_url, token)["state"] not in {"success", "failed"}, states
        time.sleep(1)
        states = task_states()
    assert states.get("approve") == "awaiting_input", states
    models = json.loads(pipelines_cli(env, "status", "--json").stdout)["models"]
    (waiting,) = [m for m in models if m["model"] == "demo_churn"]
    assert waiting["champion_version"] == "1" and waiting["last_gate_decision"]["action"] == "await_approval"

    hitl_url = f"{run_url}/taskInstances/approve/-1/hitlDetails"
    asked = request(hitl_url, token)
    # Airflow's race, not ours: an answer that re-queues the task before the scheduler has handled the
    # executor's "process ended" event of its paused run makes it fail the task ("the executor reported
    # success, but the task instance's state is queued"), as a loaded 2-core machine showed. A human
    # never answers within seconds; the test waits as long as a few scheduler loops take.
    time.sleep(5)
    assert asked["subject"] == "Promote demo_churn v3 to champion?" and "real improvement" in asked["body"]
    request(hitl_url, token, {"chosen_options": [APPROVE]}, "PATCH")

    deadline, state = time.monotonic() + 300, "running"
    while time.monotonic() < deadline and state not in {"success", "failed"}:
        time.sleep(1)
        state = request(run_url, token)["state"]
    assert state == "success", task_states()

    history = json.loads(pipelines_cli(env, "history", "demo_churn", "--json").stdout)
    approval = [e for e in history if e["event"] == "approval"]
    assert [(e["reason"], e["actor"], e["to_version"]) for e in approval] == [("approved", "airflow:admin", "3")]
    last_move = [e for e in history if e["event"] == "alias_moved"][-1]
    assert (last_move["alias"], last_move["from_version"], last_move["to_version"]) == ("champion", "1", "3")
    assert last_move["actor"] == "airflow:admin" and last_move["dag_run_id"] == run_id


def test_drift_that_persists_starts_exactly_one_training_that_records_it(stack: Stack) -> None:
    """The whole chain under the scheduler: each score run's predictions Asset starts the monitor;
    two drifted windows (the demo source drifts from 2026-01-03 05:00) make the policy emit the
    `__drift` Asset, which starts one training whose MLflow run records why."""
    from mlflow import MlflowClient

    api = stack.airflow_url + "/api/v2"
    token = request(
        stack.airflow_url + "/auth/token", payload={"username": "admin", "password": stack.password}, method="POST"
    )["access_token"]
    for dag_id in ("demo_churn__score", "demo_churn__monitor", "demo_churn__train"):
        request(f"{api}/dags/{dag_id}", token, {"is_paused": False}, "PATCH")

    def wait_for(url: str, count: int) -> list[dict[str, Any]]:
        deadline, runs = time.monotonic() + 600, []
        while time.monotonic() < deadline and not (
            len(runs) >= count and all(r["state"] in {"success", "failed"} for r in runs)
        ):
            time.sleep(1)
            runs = request(url, token)["dag_runs"]
        return list(runs)

    # After the approval test's v3 (trained until 2026-01-04 03:00): two drifted hours, scored one after the other.
    for hour in ("18", "19"):
        run_id = f"e2e_drift_{hour}"
        request(
            f"{api}/dags/demo_churn__score/dagRuns",
            token,
            {"logical_date": f"2026-01-04T{int(hour) + 1:02d}:00:00Z", "dag_run_id": run_id},
            "POST",
        )
        deadline, scored = time.monotonic() + 300, {"state": "queued"}
        while time.monotonic() < deadline and scored["state"] not in {"success", "failed"}:
            time.sleep(1)
            scored = request(f"{api}/dags/demo_churn__score/dagRuns/{run_id}", token)
        assert scored["state"] == "success", scored

    monitors = wait_for(f"{api}/dags/demo_churn__monitor/dagRuns?run_type=asset_triggered", 1)
    assert monitors and all(m["state"] == "success" for m in monitors), monitors
    trainings = wait_for(f"{api}/dags/demo_churn__train/dagRuns?run_type=asset_triggered", 1)
    assert len(trainings) == 1 and trainings[0]["state"] == "success", trainings

    with sqlite3.connect(stack.home / "tables.db") as connection:
        windows = connection.execute(
            "select interval_start, dataset_drift from drift_reports where interval_start >= '2026-01-04 18:00' "
            "order by interval_start"
        ).fetchall()
        requests = [
            json.loads(details)
            for (details,) in connection.execute("select details from model_events where event = 'drift_trigger'")
        ]
    assert [(start[:16], drifted) for start, drifted in windows] == [("2026-01-04 18:00", 1), ("2026-01-04 19:00", 1)]
    # The demo's request (07:00 on 2026-01-03), then exactly one more. The monitor's first run also
    # judged the hours scored while it was paused (its first run consumes every earlier predictions
    # event), so it may fire at 19:00 or 20:00; the cooldown holds back the other.
    demo, request_ = requests
    assert demo["window_end"] == "2026-01-03T07:00:00+00:00"
    assert request_["window_end"] in {"2026-01-04T19:00:00+00:00", "2026-01-04T20:00:00+00:00"}
    assert request_["retrain"] and request_["windows_drifted"] >= 2

    client = MlflowClient(tracking_uri=stack.mlflow_url)
    experiment = client.get_experiment_by_name("pipelines/demo_churn")
    (run,) = client.search_runs([experiment.experiment_id], "tags.trigger = 'drift'")
    tags = run.data.tags
    assert tags["dag_run_id"] == trainings[0]["dag_run_id"]
    # The version links back to the Airflow run that trained it.
    run_page = f"{stack.airflow_url}/dags/demo_churn__train/runs/{urllib.parse.quote(tags['dag_run_id'], safe='')}"
    assert tags["airflow_run_url"] == run_page
    assert tags["drift_reason"] == request_["reason"] and tags["drift_report"] == request_["report_path"]
    assert tags["window_end"] == tags["drift_window_end"] == request_["window_end"]


def test_with_the_live_feed_the_scheduled_run_of_the_current_hour_succeeds(stack: Stack) -> None:
    """The run the scheduler made for the latest hour when the score DAG was unpaused failed: the
    demo's data was January's. The live feed `pipelines up` runs writes the hours up to now; the
    same scheduled run, cleared, then succeeds and logs that hour's predictions."""
    from dataclasses import replace

    from pipelines.dev.demo import feed_live
    from pipelines.storage.settings import get_settings

    api = stack.airflow_url + "/api/v2/dags/demo_churn__score"
    token = request(
        stack.airflow_url + "/auth/token", payload={"username": "admin", "password": stack.password}, method="POST"
    )["access_token"]
    (scheduled,) = request(f"{api}/dagRuns?run_type=scheduled&order_by=-logical_date&limit=1", token)["dag_runs"]
    assert scheduled["state"] == "failed", scheduled  # no source data for that hour yet
    feed_live(replace(get_settings(), source=stack.home / "source"), datetime.now(UTC))

    run_id = scheduled["dag_run_id"]
    request(
        f"{api}/clearTaskInstances",
        token,
        {"dag_run_id": run_id, "dry_run": False, "only_failed": True, "reset_dag_runs": True},
        "POST",
    )
    deadline, state = time.monotonic() + 420, "queued"
    while time.monotonic() < deadline and state not in {"success", "failed"}:
        time.sleep(1)
        state = request(f"{api}/dagRuns/{urllib.parse.quote(run_id, safe='')}", token)["state"]
    assert state == "success", state
    with sqlite3.connect(stack.home / "tables.db") as connection:
        (rows,) = connection.execute("select count(*) from predictions where dag_run_id = ?", (run_id,)).fetchone()
    assert rows > 0


def test_sigterm_stops_every_process_it_started(stack: Stack) -> None:
    """Last in this module: stopping `pipelines up` by its pid stops Airflow's components and
    MLflow's workers too, not only the two servers `up` started itself."""
    started = descendants(stack.up.pid)
    assert len(started) >= 4, started  # API server, scheduler, DAG processor, triggerer, MLflow...
    stack.up.send_signal(signal.SIGTERM)
    assert stack.up.wait(timeout=120) == 0
    assert alive(set(started), set(started.values())) == []
