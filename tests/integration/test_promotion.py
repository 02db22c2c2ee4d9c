"""Promotion through real train DAG runs (`dag.test()`), real MLflow registry, XGBoost and GX.

One timeline, tests in file order: a deliberately weak first model (v1) becomes champion; a full
model (v2) beats it clearly and is promoted; a weak one (v3) and a copy of v2 (v4) are kept out;
re-running a DAG run adds nothing; a training killed midway moves nothing; rollback refuses a
missing version, and serves a good one in the next scoring run; a dry run decides and records but
moves nothing; `pipelines doctor` passes, then fails on a broken alias.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, func, select

from pipelines.core import errors
from pipelines.core.errors import VersionRefusedError
from pipelines.dev.demo_data import DemoConfig, write_source
from pipelines.storage import tables
from pipelines.storage.settings import Settings
from tests import REPO_ROOT
from tests.conftest import module_home

MODEL = "demo_churn"
FIRST_NIGHT = datetime(2026, 1, 3, 2, tzinfo=UTC)  # window [01-01 02:00, 01-03 02:00)
SECOND_NIGHT = FIRST_NIGHT + timedelta(days=1)  # window [01-02 02:00, 01-04 02:00)
WEAK = {"num_boost_round": 2, "xgboost_params": {"max_depth": 1}}
LINEAGE = (
    "dag_id",
    "dag_run_id",
    "logical_date",
    "data_uri",
    "data_sha256",
    "suite",
    "suite_sha256",
    "validation_result",
    "git_sha",
    "xgboost_version",
    "device",
    "rows_train",
    "rows_valid",
    "rows_holdout",
    "window_start",
    "window_end",
    "trained_until",
)


@pytest.fixture(scope="module")
def home(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with module_home(tmp_path_factory.mktemp("promotion")) as settings:
        end = datetime(2026, 1, 4, 6, tzinfo=UTC)
        write_source(settings.source / MODEL, DemoConfig(), datetime(2026, 1, 1, tzinfo=UTC), end)
        yield settings


def train(night: datetime, conf: dict[str, Any] | None = None, attempt: int = 0) -> Any:
    """A train DAG run for `night`; each `attempt` is a separate DAG run (logical date `attempt` minutes
    later, as a user triggers it in the UI) over the same night's window."""
    from pipelines.airflow.dags import run_in_process

    return run_in_process(f"{MODEL}__train", night + timedelta(minutes=attempt), run_conf=conf)


def states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def aliases(home: Settings) -> tuple[str | None, str | None]:
    from pipelines.storage.registry import CHALLENGER, CHAMPION, alias_version

    return alias_version(home, MODEL, CHAMPION), alias_version(home, MODEL, CHALLENGER)


def versions() -> list[str]:
    from mlflow import MlflowClient

    return sorted((str(v.version) for v in MlflowClient().search_model_versions(f"name = '{MODEL}'")), key=int)


def events(engine: Engine, kind: str | None = None) -> list[dict[str, Any]]:
    from pipelines.storage.registry import history

    return [e for e in history(engine, MODEL) if kind is None or e["event"] == kind]


def decision_of(version: str) -> dict[str, Any]:
    import mlflow
    from mlflow import MlflowClient

    run_id = MlflowClient().get_model_version(MODEL, version).run_id
    return dict(mlflow.artifacts.load_dict(f"runs:/{run_id}/gate/decision.json"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300
    )


def test_first_model_becomes_champion_with_full_lineage(home: Settings, engine: Engine) -> None:
    from mlflow import MlflowClient

    dag_run = train(FIRST_NIGHT, WEAK)
    assert dag_run.state == "success", states(dag_run)
    assert aliases(home) == ("1", "1")
    version = MlflowClient().get_model_version(MODEL, "1")
    missing = [key for key in LINEAGE if not version.tags.get(key)]
    assert not missing, f"lineage tags missing on the version: {missing}"
    assert version.tags["dag_run_id"] == dag_run.run_id and version.tags["device"] in {"cpu", "cuda"}
    snapshot = json.loads(Path(version.tags["data_uri"].removeprefix("file://")).read_text())
    assert snapshot["sha256"] == version.tags["data_sha256"] and len(snapshot["partitions"]) == 48
    assert Path(version.tags["validation_result"].removeprefix("file://")).exists()
    run = MlflowClient().get_run(version.run_id)
    assert run.inputs.dataset_inputs, "dataset logged with mlflow.log_input"
    # ... and links back to its Airflow run, where `pipelines up` serves the UI by default.
    run_page = f"http://localhost:8080/dags/{dag_run.dag_id}/runs/{quote(dag_run.run_id, safe='')}"
    assert run.data.tags["airflow_run_url"] == run_page
    assert version.tags["gate.verdict"] == "promote"
    assert version.tags["gate.reason"].startswith("no champion yet and beats the base rate: auc improvement")
    assert [(e["alias"], e["from_version"], e["to_version"]) for e in events(engine, "alias_moved")] == [
        ("challenger", None, "1"),
        ("champion", None, "1"),
    ]


def test_clearly_better_challenger_is_promoted(home: Settings, engine: Engine) -> None:
    dag_run = train(SECOND_NIGHT)
    assert dag_run.state == "success", states(dag_run)
    assert aliases(home) == ("2", "2")
    decision = decision_of("2")
    assert decision["verdict"] == "promote" and decision["action"] == "promote"
    assert decision["champion_version"] == "1" and decision["metric"] == "auc"
    assert decision["interval"]["lower"] > decision["gate"]["min_improvement"]
    assert decision["holdout"]["rows"] >= decision["gate"]["min_holdout_rows"]
    assert decision["holdout"]["fresh_from"] is not None  # only rows v1 never trained on
    assert {s["column"] for s in decision["slices"]} == {"plan", "region"}
    row = events(engine, "gate_decision")[-1]
    assert row["to_version"] == "2" and row["from_version"] == "1" and json.loads(row["details"]) == decision
    move = events(engine, "alias_moved")[-1]
    assert (move["alias"], move["from_version"], move["to_version"]) == ("champion", "1", "2")
    assert move["dag_run_id"] == dag_run.run_id and move["actor"] and move["reason"].startswith("real improvement")


def test_worse_challenger_leaves_the_champion(home: Settings) -> None:
    dag_run = train(SECOND_NIGHT, WEAK, attempt=1)
    assert dag_run.state == "success", states(dag_run)
    assert aliases(home) == ("2", "3")
    decision = decision_of("3")
    assert decision["verdict"] == "keep" and decision["action"] == "keep_champion"
    assert decision["interval"]["upper"] < 0  # clearly worse, not just not better


def test_equal_challenger_is_not_promoted(home: Settings) -> None:
    dag_run = train(SECOND_NIGHT, attempt=2)  # same data, same params: the same model as v2
    assert dag_run.state == "success", states(dag_run)
    assert aliases(home) == ("2", "4")
    decision = decision_of("4")
    assert decision["verdict"] == "keep"
    assert decision["interval"]["point"] == decision["interval"]["lower"] == decision["interval"]["upper"] == 0


def test_rerunning_the_same_dag_run_adds_no_version(home: Settings, engine: Engine) -> None:
    before_versions, before_events = versions(), len(events(engine))
    dag_run = train(SECOND_NIGHT, attempt=2)  # the run that made v4, again
    assert dag_run.state == "success", states(dag_run)
    assert versions() == before_versions == ["1", "2", "3", "4"]
    assert aliases(home) == ("2", "4")
    assert len(events(engine)) == before_events  # same decision, read back; no alias moved


def test_training_killed_midway_leaves_both_aliases(home: Settings, engine: Engine) -> None:
    from mlflow import MlflowClient

    night, attempt = SECOND_NIGHT, 3
    run_id = f"manual__{(night + timedelta(minutes=attempt)).isoformat()}"
    code = (
        "from datetime import datetime, timedelta\n"
        "from pipelines.airflow.dags import run_in_process\n"
        f"night = datetime.fromisoformat('{night.isoformat()}')\n"
        f"run_in_process('{MODEL}__train', night + timedelta(minutes={attempt}))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, start_new_session=True)
    client = MlflowClient()
    running = []
    deadline = time.monotonic() + 240
    while not running and time.monotonic() < deadline and child.poll() is None:
        running = client.search_runs(
            [r.experiment_id for r in client.search_experiments()],
            filter_string=f"tags.dag_run_id = '{run_id}' and attributes.status = 'RUNNING'",
        )
        time.sleep(0.1)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert running, "the training never started (or finished before it could be killed)"
    assert aliases(home) == ("2", "4") and versions() == ["1", "2", "3", "4"]

    dag_run = train(night, attempt=attempt)  # the same DAG run, tried again
    assert dag_run.state == "success", states(dag_run)
    assert client.get_run(running[0].info.run_id).info.status == "KILLED"
    assert versions() == ["1", "2", "3", "4", "5"] and aliases(home) == ("2", "5")


def test_rollback_to_a_missing_version_fails_and_changes_nothing(home: Settings, engine: Engine) -> None:
    from pipelines.airflow.dags import run_in_process

    before = len(events(engine))
    dag_run = run_in_process(f"{MODEL}__rollback", None, run_conf={"version": "99"}, run_after=datetime.now(UTC))
    assert dag_run.state == "failed"
    result = cli("rollback", MODEL, "99")
    assert result.returncode == 1
    assert "has no version '99'" in result.stderr and "champion unchanged" in result.stderr
    assert aliases(home)[0] == "2" and len(events(engine)) == before


def test_rollback_is_served_by_the_next_scoring_run(home: Settings, engine: Engine) -> None:
    from pipelines.airflow.dags import run_in_process

    dag_run = run_in_process(
        f"{MODEL}__rollback", None, run_conf={"version": "1", "reason": "v2 misbehaves"}, run_after=datetime.now(UTC)
    )
    assert dag_run.state == "success", states(dag_run)
    assert aliases(home)[0] == "1"
    move = events(engine, "alias_moved")[-1]
    assert (move["alias"], move["from_version"], move["to_version"]) == ("champion", "2", "1")
    assert move["reason"] == "rollback: v2 misbehaves" and move["dag_run_id"] == dag_run.run_id

    hour = datetime(2026, 1, 4, 3, tzinfo=UTC)
    scored = run_in_process(f"{MODEL}__score", hour + timedelta(hours=1))
    assert scored.state == "success", states(scored)
    p = tables.predictions
    with engine.connect() as connection:
        served = connection.execute(
            select(p.c.model_version, func.count()).where(p.c.as_of >= hour).group_by(p.c.model_version)
        ).all()
    assert len(served) == 1 and served[0][0] == "1" and served[0][1] > 0


def test_dry_run_decides_and_records_but_moves_nothing(home: Settings, engine: Engine) -> None:
    before = events(engine, "alias_moved")
    dag_run = train(SECOND_NIGHT, {"dry_run": True}, attempt=4)
    assert dag_run.state == "success", states(dag_run)
    decision = decision_of("6")
    assert decision["mode"] == "dry_run" and decision["verdict"] == "promote" and decision["action"] == "dry_run"
    assert decision["champion_version"] == "1"
    assert aliases(home) == ("1", "6")  # a new challenger, the champion untouched
    moved = events(engine, "alias_moved")[len(before) :]
    assert [(e["alias"], e["to_version"]) for e in moved] == [("challenger", "6")]
    assert events(engine, "gate_decision")[-1]["to_version"] == "6"


def test_history_and_status_tell_the_story(home: Settings) -> None:
    history = cli("history", MODEL)
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert any("champion: v2 -> v1" in line and "rollback: v2 misbehaves" in line for line in lines)
    assert any("gate: v6 vs champion v1: dry_run" in line for line in lines)
    status = json.loads(cli("status", "--json").stdout)["models"][0]
    assert status["champion_version"] == "1" and status["champion_since"] is not None
    assert status["last_gate_decision"]["action"] == "dry_run"


def test_doctor_passes_then_fails_on_a_broken_alias(
    home: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from pipelines.airflow.dags import run_in_process
    from pipelines.core.spec import load_spec
    from pipelines.stages.score import require_recorded_champion
    from pipelines.storage import registry

    healthy = cli("doctor")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "demo_churn@champion -> v1: READY" in healthy.stdout

    client = MlflowClient()
    champion_run = client.get_model_version(MODEL, "1").run_id
    client.delete_run(champion_run)
    broken = cli("doctor")
    assert broken.returncode == 1
    assert f"demo_churn@champion -> v1: demo_churn v1: its source run {champion_run} is deleted" in broken.stdout
    client.restore_run(champion_run)

    client.set_registered_model_alias(MODEL, "champion", "3")  # moved behind the pipeline's back
    drifted = cli("doctor")
    assert drifted.returncode == 1 and "moved outside the pipeline" in drifted.stdout
    # Scoring does not serve it either until the move is on record.
    hour = datetime(2026, 1, 4, 5, tzinfo=UTC)
    refused = run_in_process(f"{MODEL}__score", hour + timedelta(hours=1))
    assert refused.state == "failed" and states(refused)["score"] == "failed"
    with pytest.raises(
        VersionRefusedError, match=r"demo_churn@champion -> v3 in MLflow, but the pipeline's history last"
    ):
        require_recorded_champion(load_spec(home.specs_dir / f"{MODEL}.yaml"), engine, "3")
    with engine.connect() as connection:
        p = tables.predictions
        assert connection.execute(select(func.count()).where(p.c.as_of >= hour)).scalar_one() == 0
    registry.rollback(
        home, engine, MODEL, "binary", "3", reason="moved in MLflow by hand", dag_run_id=None, actor="test"
    )  # as the CLI does
    move = events(engine, "alias_moved")[-1]
    assert (move["from_version"], move["to_version"], move["reason"]) == ("1", "3", "rollback: moved in MLflow by hand")
    require_recorded_champion(load_spec(home.specs_dir / f"{MODEL}.yaml"), engine, "3")  # on record: served
    registry.rollback(
        home, engine, MODEL, "binary", "1", reason="back to v1 for the next tests", dag_run_id=None, actor="test"
    )

    # A model file over the size limit is refused from the registry's listing, before it is read.
    monkeypatch.setattr(registry, "MAX_MODEL_BYTES", 1024)
    with pytest.raises(errors.UnsafeModelError, match=r"demo_churn v1: its model file 'model.\w+' is [\d,]+ bytes"):
        registry.load_model(home, MODEL, "1")


def craft_version(
    home: Settings, tmp: Path, mlmodel_changes: dict[str, Any], model_bytes: bytes | None = None, tag: bool = True
) -> str:
    """A version as someone with write access to the registry could register it: v2's files, its
    recorded sha256 tag copied over, an MLmodel saying what the caller wants, and a bundled module
    that writes `tmp/marker` when imported."""
    import mlflow
    import yaml
    from mlflow import MlflowClient

    from pipelines.storage.registry import MODEL_SHA256_TAG
    from pipelines.storage.tracking import experiment_id

    client = MlflowClient()
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/2", dst_path=str(tmp / "v2")))
    (folder / "code").mkdir()
    (folder / "code" / "evil_booster.py").write_text(
        f"import pathlib\npathlib.Path({str(tmp / 'marker')!r}).write_text('ran')\nfrom xgboost import Booster\n"
    )
    if model_bytes is not None:
        (folder / "model.json").write_bytes(model_bytes)
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    mlmodel["flavors"]["xgboost"].update(mlmodel_changes)
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with mlflow.start_run(experiment_id=experiment_id(home, MODEL)) as run:
        mlflow.log_artifacts(str(folder), artifact_path="model")
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", MODEL)
    if tag:
        recorded = client.get_model_version(MODEL, "2").tags[MODEL_SHA256_TAG]
        client.set_model_version_tag(MODEL, version.version, MODEL_SHA256_TAG, recorded)
    return str(version.version)


def test_a_version_with_bundled_code_never_runs_it(home: Settings, engine: Engine, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from pipelines.airflow.dags import run_in_process

    crafted = craft_version(home, tmp_path, {"code": "code", "model_class": "evil_booster.Booster"})
    marker = tmp_path / "marker"
    # The crafted entry is a live attack: MLflow's own loader imports the bundled module.
    subprocess.run(
        [sys.executable, "-c", f"import mlflow.xgboost; mlflow.xgboost.load_model('models:/{MODEL}/{crafted}')"],
        env={**os.environ, "MLFLOW_TRACKING_URI": home.mlflow_tracking_uri},
        capture_output=True,
        timeout=300,
        check=True,
    )
    assert marker.read_text() == "ran"
    marker.unlink()

    client = MlflowClient()
    client.set_registered_model_alias(MODEL, "champion", "1")
    refused = cli("rollback", MODEL, crafted)
    assert refused.returncode == 1 and "champion unchanged" in refused.stderr
    assert f"demo_churn v{crafted}: its MLmodel bundles code" in refused.stderr
    dag_run = run_in_process(f"{MODEL}__rollback", None, run_conf={"version": crafted}, run_after=datetime.now(UTC))
    assert dag_run.state == "failed" and aliases(home)[0] == "1"

    client.set_registered_model_alias(MODEL, "champion", crafted)  # written straight into the registry
    scored = run_in_process(f"{MODEL}__score", datetime(2026, 1, 4, 5, tzinfo=UTC))
    assert scored.state == "failed" and states(scored)["score"] == "failed"
    doctor = cli("doctor")
    assert doctor.returncode == 1
    assert f"demo_churn@champion -> v{crafted}: demo_churn v{crafted}: its MLmodel bundles code" in doctor.stdout
    assert not marker.exists()  # score, rollback (CLI and DAG) and doctor imported nothing
    p = tables.predictions
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).where(p.c.model_version == crafted)).scalar_one() == 0
    client.set_registered_model_alias(MODEL, "champion", "1")


@pytest.mark.parametrize(
    ("changes", "tamper", "reason"),
    [
        ({"model_class": "os.PathLike"}, False, "names model_class 'os.PathLike'; only xgboost.core.Booster"),
        ({"data": "model.pkl", "model_format": "pickle"}, False, "is not a JSON or UBJ booster file"),
        ({}, True, "the file was changed after registration"),
    ],
)
def test_foreign_classes_formats_and_changed_files_are_refused(
    home: Settings, tmp_path: Path, changes: dict[str, Any], tamper: bool, reason: str
) -> None:
    import mlflow

    from pipelines.core.errors import UnsafeModelError
    from pipelines.storage.registry import load_model

    original = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/2/model.json", dst_path=str(tmp_path)))
    model_bytes = original.read_bytes().replace(b'"num_trees":"', b'"num_trees" :"') if tamper else None
    assert model_bytes != original.read_bytes() or not tamper
    crafted = craft_version(home, tmp_path, changes, model_bytes)
    with pytest.raises(UnsafeModelError, match=reason):
        load_model(home, MODEL, crafted)
    assert not (tmp_path / "marker").exists()


def test_a_champion_from_before_sha256_checks_is_replaced_by_the_gate_or_adopted(
    home: Settings, engine: Engine, tmp_path: Path
) -> None:
    """Versions registered before this release have no model_sha256 tag: scoring refuses them and says
    what to do; the gate does not let such a champion block every challenger; adopt-model records it."""
    from mlflow import MlflowClient

    from pipelines.core.errors import UnsafeModelError
    from pipelines.storage.registry import MODEL_SHA256_TAG, load_model, move_alias

    old = craft_version(home, tmp_path, {}, tag=False)  # v2's very files, registered without the tag
    with pytest.raises(UnsafeModelError, match=rf"no 'model_sha256' tag.*`pipelines adopt-model {MODEL} {old}`"):
        load_model(home, MODEL, old)
    move_alias(
        home,
        engine,
        MODEL,
        "champion",
        old,
        reason="test: a champion from the previous release",
        dag_run_id=None,
        actor="test",
    )

    dag_run = train(SECOND_NIGHT, attempt=7)
    assert dag_run.state == "success", states(dag_run)
    new = aliases(home)[1]
    decision = decision_of(str(new))
    assert decision["champion_version"] == old and decision["action"] == "promote"
    assert decision["reason"].startswith(f"champion v{old} cannot serve (demo_churn v{old}: no 'model_sha256' tag")
    assert aliases(home)[0] == new

    adopted = cli("adopt-model", MODEL, old, "--reason", "test: checked by hand")
    assert adopted.returncode == 0, adopted.stderr
    version = MlflowClient().get_model_version(MODEL, old)
    assert version.tags[MODEL_SHA256_TAG] == MlflowClient().get_model_version(MODEL, "2").tags[MODEL_SHA256_TAG]
    assert load_model(home, MODEL, old).booster is not None
    assert events(engine, "model_adopted")[-1]["to_version"] == old

    (tmp_path / "second").mkdir()
    with_code = craft_version(home, tmp_path / "second", {"code": "code"}, tag=False)
    refused = cli("adopt-model", MODEL, with_code)
    assert refused.returncode == 1 and "bundles code" in refused.stderr
    assert MODEL_SHA256_TAG not in MlflowClient().get_model_version(MODEL, with_code).tags


def test_a_challenger_no_better_than_the_base_rate_is_registered_but_never_promoted(
    home: Settings, engine: Engine
) -> None:
    """A model that learned nothing (no split is ever worth it: one constant score, AUC 0.5) is
    registered as challenger, but the floor keeps it from champion, judged on its own holdout before
    any comparison; the decision records the training base rate and the figures, and `status` says why."""
    from mlflow import MlflowClient

    champion_before = aliases(home)[0]
    dag_run = train(SECOND_NIGHT, {"xgboost_params": {"min_child_weight": 1e9}}, attempt=9)
    assert dag_run.state == "success", states(dag_run)
    champion, challenger = aliases(home)
    assert champion == champion_before and challenger not in (None, champion)
    decision = decision_of(str(challenger))
    assert decision["verdict"] == "keep" and decision["action"] == "keep_champion"
    assert decision["reason"].startswith("no better than the base rate: auc improvement over the base rate +0.0000")
    floor = decision["base_rate"]["interval"]
    assert floor["point"] == floor["lower"] == floor["upper"] == 0.0  # one score: AUC 0.5 on every resample
    version = MlflowClient().get_model_version(MODEL, str(challenger))
    base_rate = decision["base_rate"]["baseline"]["base_rate"]
    assert 0 < base_rate < 1 and json.loads(version.tags["training_baseline"]) == {"base_rate": base_rate}
    status = cli("status")
    assert status.returncode == 0, status.stderr
    assert f"v{challenger} vs v{champion}: keep_champion (no better than the base rate" in status.stdout
