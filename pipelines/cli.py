"""The `pipelines` command: status, history, rollback, doctor, demo, up, airflow."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from pipelines.core.dag_kinds import SCHEDULED_KINDS
from pipelines.core.tasks import Task
from pipelines.storage.settings import Settings, get_settings

if TYPE_CHECKING:
    from pipelines.core.spec import ModelSpec


def _embedded_airflow() -> Settings:
    """The embedded Airflow's environment in this process (where the user set none), with the demo's connections."""
    from pipelines.airflow.embedded import apply_airflow_environment
    from pipelines.dev.demo_data import demo_connections

    settings = get_settings()
    return apply_airflow_environment(settings, demo_connections(settings.source))


def _settings() -> Settings:
    """The storage tasks use: the same Airflow connections, else the embedded defaults (said on stderr)."""
    from sqlalchemy import make_url

    from pipelines.airflow.connections import cli_settings

    home_is_default = not os.environ.get("PIPELINES_HOME")  # before the embedded Airflow's variables name it
    _embedded_airflow()
    settings = cli_settings()
    tables = make_url(settings.tables_url).render_as_string(hide_password=True)
    home = f"{settings.home}{' (PIPELINES_HOME unset: the default)' if home_is_default else ''}"
    print(f"home: {home}; tables: {tables} (from {settings.tables_from}); lake: {settings.lake.uri}", file=sys.stderr)
    return settings


def _engine(settings: Settings, read_only: bool = True) -> Any:
    from pipelines.storage.database import make_engine

    return make_engine(settings.tables_url, read_only=read_only)


def _status(args: argparse.Namespace) -> int:
    from pipelines.views.status import format_status, status

    settings = _settings()
    report = status(settings, _engine(settings))
    print(json.dumps(report, indent=2, default=str) if args.json else format_status(report))
    return 1 if report["spec_errors"] else 0


def _model_specs() -> list[ModelSpec]:
    from pipelines.core.errors import SpecError
    from pipelines.core.spec import load_spec, spec_paths

    specs = []
    for path in spec_paths(get_settings().specs_dir):
        try:
            specs.append(load_spec(path))
        except SpecError as exc:
            print(f"spec error: {exc}", file=sys.stderr)
    return specs


def _model_names() -> list[str]:
    return [spec.name for spec in _model_specs()]


def _known_model(name: str) -> bool:
    if name in _model_names():
        return True
    print(f"unknown model '{name}': no spec dags/models/{name}.yaml (known: {_model_names()})", file=sys.stderr)
    return False


def event_summary(event: dict[str, Any]) -> str:
    """One event of `pipelines history`, in words; a version is shown only where the event has one."""
    before = "-" if event["from_version"] is None else f"v{event['from_version']}"
    kind, to = event["event"], event["to_version"]
    details = json.loads(event["details"]) if event["details"] else {}
    if kind == "alias_moved":
        return f"{event['alias']}: {before} -> v{to}"
    if kind == "gate_decision":
        return f"gate: v{to} vs champion {before}: {details.get('action', '?')}"
    if kind == "approval":
        return f"approval of v{to}: {event['reason']}"
    if kind == "drift_trigger":
        return f"drift: retraining requested for the window ending {details.get('window_end', '?')}"
    if kind == "model_adopted":
        return f"adopted v{to}"
    return kind if to is None else f"{kind}: v{to}"


def _history(args: argparse.Namespace) -> int:
    from pipelines.storage.registry import history

    if not _known_model(args.model):
        return 2
    settings = _settings()
    events = history(_engine(settings), args.model)
    if args.json:
        print(json.dumps(events, indent=2, default=str))
        return 0
    if not events:
        print(f"{args.model}: no events recorded yet")
    for e in events:
        at = e["at"].strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{at}  {event_summary(e):<48} {e['actor']:<22} {e['dag_run_id'] or '-'}  {e['reason']}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    import getpass

    from pipelines.core.errors import VersionNotServableError
    from pipelines.core.spec import load_spec
    from pipelines.storage.registry import rollback

    if not _known_model(args.model):
        return 2
    settings = _settings()
    task = load_spec(settings.specs_dir / f"{args.model}.yaml").task
    try:
        moved = rollback(
            settings, _engine(settings, False), args.model, task, args.version, reason=args.reason, dag_run_id=None,
            actor=f"cli:{getpass.getuser()}",
        )  # fmt: skip
    except VersionNotServableError as exc:
        print(f"rollback refused, champion unchanged: {exc}", file=sys.stderr)
        return 1
    print(f"{args.model}: champion is v{args.version}" + ("" if moved else " (it already was)"))
    return 0


def _adopt(args: argparse.Namespace) -> int:
    import getpass

    from pipelines.core.errors import VersionNotServableError
    from pipelines.storage.registry import adopt_version

    if not _known_model(args.model):
        return 2
    settings = _settings()
    try:
        digest = adopt_version(
            settings,
            _engine(settings, False),
            args.model,
            args.version,
            reason=args.reason,
            actor=f"cli:{getpass.getuser()}",
        )
    except VersionNotServableError as exc:
        print(f"not adopted: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.model} v{args.version}: booster file sha256 {digest} recorded; it is checked on every load from now on"
    )
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from pipelines.views.doctor import doctor

    settings = _settings()
    checkup = doctor(settings, _engine(settings), _model_specs())
    for line in checkup.ok:
        print(f"ok       {line}")
    for line in checkup.problems:
        print(f"PROBLEM  {line}")
    print(f"{len(checkup.problems)} problem(s)")
    return 1 if checkup.problems else 0


def _db_upgrade(args: argparse.Namespace) -> int:
    from sqlalchemy import make_url

    from pipelines.storage.database import upgrade_schema

    url = _settings().tables_url
    before, after = upgrade_schema(url)
    where = make_url(url).render_as_string(hide_password=True)
    print(
        f"{where}: schema {before or 'unversioned'} -> {after}"
        if before != after
        else f"{where}: schema {after}, up to date"
    )
    return 0


def _param(text: str) -> tuple[str, Any]:
    """KEY=VALUE; the value is read as JSON where it is JSON (2, true, {"max_depth": 1}), else as text."""
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise ValueError(f"'{text}' is not KEY=VALUE, e.g. rescore_with=champion")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _run(args: argparse.Namespace) -> int:
    import time
    from datetime import datetime

    from pipelines.airflow.embedded import migrate_airflow_db
    from pipelines.core.errors import RunInProgressError
    from pipelines.core.spec import load_spec
    from pipelines.dev.runs import interval_lock, planned_runs

    model, _, kind = args.dag_id.rpartition("__")
    if not _known_model(model):
        return 2
    spec = load_spec(get_settings().specs_dir / f"{model}.yaml")
    try:
        runs = planned_runs(spec, kind, datetime.fromisoformat(args.start), datetime.fromisoformat(args.end))
    except ValueError as exc:  # a date fromisoformat cannot read
        print(f"error: --start/--end: {exc}", file=sys.stderr)
        return 2
    if not runs:
        print(f"{args.dag_id}: no whole interval of its schedule lies in [{args.start}, {args.end})", file=sys.stderr)
        return 2
    try:
        params = dict(_param(text) for text in args.param)
    except ValueError as exc:
        print(f"error: --param: {exc}", file=sys.stderr)
        return 2
    settings = _embedded_airflow()
    migrate_airflow_db(settings)
    from pipelines.airflow.dags import load_dag, run_in_process

    accepted = set(load_dag(args.dag_id).params.keys()) if params else set()
    unknown = sorted(set(params) - accepted)
    if unknown:
        known = ", ".join(sorted(accepted)) or "none"
        print(f"error: --param: {args.dag_id} has no param {', '.join(unknown)}; its params: {known}", file=sys.stderr)
        return 2
    for run in runs:
        started = time.perf_counter()
        # A monitor run by hand takes its interval as params (no logical date); the others keep theirs.
        conf = {**(run.conf or {}), **params} or None
        try:
            with interval_lock(settings.home, run.dag_id, run.start, run.end):
                dag_run = run_in_process(run.dag_id, None if run.conf else run.end, run_conf=conf, run_after=run.end)
        except RunInProgressError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        took = time.perf_counter() - started
        print(
            f"{run.dag_id}  {run.start:%Y-%m-%d %H:%M} .. {run.end:%Y-%m-%d %H:%M}  {dag_run.state}  ({took:.1f}s)",
            flush=True,
        )
        if dag_run.state != "success":
            print(f"{run.dag_id} failed for [{run.start}, {run.end}); later intervals were not run", file=sys.stderr)
            return 1
    return 0


def _new_model(args: argparse.Namespace) -> int:
    from datetime import datetime
    from pathlib import Path

    from pipelines.airflow.connections import cli_connection
    from pipelines.core.project import Project
    from pipelines.dev.scaffold import new_model, parse_source
    from pipelines.storage.sources import SourceAccess

    try:
        sample = (datetime.fromisoformat(args.sample_start), datetime.fromisoformat(args.sample_end))
    except ValueError as exc:
        print(f"error: --sample-start/--sample-end: {exc}", file=sys.stderr)
        return 2
    settings = _settings()
    columns = {
        "entity_key": args.entity_key,
        "timestamp": args.timestamp,
        "label": args.label,
        "arrived_at": args.arrived_at,
    }
    written = new_model(
        args.name,
        parse_source(args.events, args.s3_connection),
        parse_source(args.labels, args.s3_connection, sparse=True),
        columns=columns,
        partition=args.partition,
        sample=sample,
        access=SourceAccess(settings.source, cli_connection),
        project=Project(Path(args.project).resolve(), "--project") if args.project else settings.project,
        task=Task(args.task),
        classes=[c.strip() for c in args.classes.split(",")] if args.classes else None,
    )
    for path in written:
        print(f"wrote {path}")
    # One command from nothing to a trainable model: the home's tables are prepared here, not by a
    # first train that fails asking for `db upgrade`.
    from sqlalchemy import make_url

    from pipelines.storage.database import upgrade_schema

    before, after = upgrade_schema(settings.tables_url)
    where = make_url(settings.tables_url).render_as_string(hide_password=True)
    print(f"tables {where}: " + (f"created at schema {after}" if before is None else f"schema {after}, ready"))
    print(f"review them, then: pipelines run {args.name}__train --start ... --end ...")
    return 0


def _suite(args: argparse.Namespace) -> int:
    """Check a model's suite against a range of the source's partitions; with --accept, widen what failed."""
    from datetime import datetime

    from pipelines.airflow.connections import cli_connection
    from pipelines.core.spec import load_spec
    from pipelines.stages.suites import accept, check_partitions, source_partitions
    from pipelines.stages.validate import load_suite_definition
    from pipelines.storage.sources import SourceAccess

    settings = _settings()
    spec = load_spec(settings.specs_dir / f"{args.model}.yaml")
    start, end = datetime.fromisoformat(args.start), datetime.fromisoformat(args.end)
    definition, sha = load_suite_definition(spec.suite_path)
    path = str(spec.suite_path)
    parts = source_partitions(spec, SourceAccess(settings.source, cli_connection), start, end)
    check = check_partitions(definition, parts)
    print(f"suite {path} (sha256 {sha[:12]}) on {check.partitions} {spec.partition}(s) of [{args.start}, {args.end}):")
    for partition in (p.isoformat() for p in parts):
        failed = check.failing.get(partition)
        print(f"  {partition}  {'FAILS' if failed else 'passes'}")
        for line in failed or []:
            print(f"      {line}")
    for widening in check.widenings:
        print(f"  to accept: {widening.edit(path)}")
    if not check.failing:
        return 0
    if not args.accept:
        print("rerun with --accept to write these edits (the old suite's sha256 is kept in its meta)")
        return 1
    before, after = accept(path, check.widenings, f"[{args.start}, {args.end})")
    print(f"accepted: {path} sha256 {before[:12]} -> {after[:12]}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pipelines.dev.demo import main

    return main(reset=args.reset)


def _up(args: argparse.Namespace) -> int:
    from pipelines.dev.up import Ports, main

    ports = Ports(args.airflow_port, args.mlflow_port, args.worker_log_port, args.trigger_log_port)
    return main(ports, args.start_timeout, live_demo=not args.no_live_demo)


def _init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipelines.dev.project import init_project

    for path in init_project(Path(args.directory)):
        print(f"wrote {path}")
    print(f"next: cd {Path(args.directory).resolve()} && pipelines new-model NAME ... (see its README.md)")
    return 0


def _init_stack(args: argparse.Namespace) -> int:
    import os

    from pipelines.dev.scaleout import init_stack

    init_stack(os.environ)
    return 0


def _airflow(args: argparse.Namespace) -> int:
    import os
    import subprocess

    _embedded_airflow()
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    return subprocess.call([airflow, *args.airflow_args])


def _data_docs(_args: argparse.Namespace) -> int:
    from pipelines.stages.validate import build_data_docs
    from pipelines.storage.settings import get_settings

    print(build_data_docs(get_settings().gx_root))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipelines", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="champion, table counts, last validation and drift per model")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)
    history = commands.add_parser("history", help="every alias move and gate decision of a model, oldest first")
    history.add_argument("model")
    history.add_argument("--json", action="store_true", help="machine-readable output")
    history.set_defaults(func=_history)
    rollback = commands.add_parser("rollback", help="move `champion` to an earlier version, after checking it")
    rollback.add_argument("model")
    rollback.add_argument("version")
    rollback.add_argument("--reason", default="manual rollback", help="why, for the history")
    rollback.set_defaults(func=_rollback)
    adopt = commands.add_parser(
        "adopt-model",
        help="record the booster file's sha256 of a version registered before this release, after checking it "
        "bundles no code and is a JSON/UBJ booster",
    )
    adopt.add_argument("model")
    adopt.add_argument("version")
    adopt.add_argument("--reason", default="adopted: registered before sha256 checks", help="why, for the history")
    adopt.set_defaults(func=_adopt)
    doctor = commands.add_parser(
        "doctor", help="check every alias resolves to a READY, loadable version with its run; non-zero if not"
    )
    doctor.set_defaults(func=_doctor)
    docs = commands.add_parser(
        "data-docs", help="rebuild GX Data Docs from the stored validation results now (the nightly training does)"
    )
    docs.set_defaults(func=_data_docs)
    db = commands.add_parser("db", help="the pipeline's tables")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser(
        "upgrade",
        help="migrate the tables tasks use (Airflow connection pipelines_tables, else PIPELINES_TABLES_URL) to this code's schema; keeps every row",
    )
    upgrade.set_defaults(func=_db_upgrade)
    run = commands.add_parser(
        "run", help="run a model's DAG in process over every whole interval of its schedule in [--start, --end)"
    )
    run.add_argument("dag_id", help=f"e.g. demo_churn__score ({', '.join(SCHEDULED_KINDS)})")
    run.add_argument("--start", required=True, help="ISO time with zone, e.g. 2026-01-03T02:00Z")
    run.add_argument("--end", required=True, help="ISO time with zone, e.g. 2026-01-03T06:00Z")
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a DAG param for every run, as the trigger form sets it, e.g. rescore_with=champion or dry_run=true "
        "(repeatable; VALUE is read as JSON where it is JSON)",
    )
    run.set_defaults(func=_run)
    new = commands.add_parser(
        "new-model", help="scaffold a model on your data: its spec, DAG file and a starter GX suite from a sample"
    )
    new.add_argument("name", help="the model's name: lowercase letters, digits and '_'")
    for feed in ("events", "labels"):
        new.add_argument(
            f"--{feed}",
            required=True,
            help="sql://CONNECTION/TABLE, or a CSV/parquet path under PIPELINES_SOURCE or s3://..., with "
            "{start:%%Y-%%m-%%d} placeholders for one file per partition",
        )
    new.add_argument("--entity-key", required=True, help="the column identifying what is scored")
    new.add_argument("--timestamp", required=True, help="the event time column (UTC, or with an offset)")
    new.add_argument("--label", required=True, help="the label column of the label feed")
    new.add_argument("--task", choices=[str(task) for task in Task], default=str(Task.BINARY))
    new.add_argument("--classes", help="task multiclass: the label's class names, comma-separated")
    new.add_argument("--arrived-at", default="arrived_at", help="the label feed's arrival time column")
    new.add_argument("--partition", choices=["hour", "day"], default="hour")
    new.add_argument("--sample-start", required=True, help="ISO time with zone: the sample the suite is inferred from")
    new.add_argument("--sample-end", required=True)
    new.add_argument("--s3-connection", help="the Airflow 'aws' connection for s3:// paths")
    new.add_argument(
        "--project",
        help="the project whose dags/, dags/models/ and expectations/ get the model's files "
        "(default: PIPELINES_PROJECT, else the project around the current directory)",
    )
    new.set_defaults(func=_new_model)
    suite = commands.add_parser(
        "suite", help="check a model's suite on a range of source partitions; --accept widens what failed"
    )
    suite.add_argument("model")
    suite.add_argument("--start", required=True, help="ISO time with zone: the first partition to check")
    suite.add_argument("--end", required=True, help="ISO time with zone: the end of the range (exclusive)")
    suite.add_argument("--accept", action="store_true", help="rewrite the failed bounds from these partitions")
    suite.set_defaults(func=_suite)
    demo = commands.add_parser("demo", help="run the demo model end to end through Airflow")
    demo.add_argument("--reset", action="store_true", help="delete the pipelines home first")
    demo.set_defaults(func=_demo)
    up = commands.add_parser("up", help="start Airflow (standalone) and the MLflow UI on the pipelines home")
    up.add_argument("--airflow-port", type=int, default=8080, help="the Airflow UI and API (0: a free port)")
    up.add_argument("--mlflow-port", type=int, default=5000, help="the MLflow UI (0: a free port)")
    up.add_argument("--worker-log-port", type=int, default=0, help="Airflow's task log server (0: a free port)")
    up.add_argument("--trigger-log-port", type=int, default=0, help="Airflow's triggerer log server (0: a free port)")
    up.add_argument(
        "--no-live-demo",
        action="store_true",
        help="do not extend the demo's sources to the current hour while running",
    )
    up.add_argument(
        "--start-timeout", type=float, default=None, help="give up when Airflow is not healthy after this many seconds"
    )
    up.set_defaults(func=_up)
    init = commands.add_parser(
        "init", help="create a project for your own models (dags/, dags/models/, expectations/) in DIRECTORY"
    )
    init.add_argument("directory")
    init.set_defaults(func=_init)
    init = commands.add_parser(
        "init-stack",
        help="prepare a scale-out stack from its environment (pipelines/dev/scaleout.py): databases, buckets, schemas",
    )
    init.set_defaults(func=_init_stack)
    airflow = commands.add_parser(
        "airflow", help="the Airflow CLI on the pipelines home, e.g. `pipelines airflow dags list`"
    )
    airflow.add_argument("airflow_args", nargs=argparse.REMAINDER)
    airflow.set_defaults(func=_airflow)
    args = parser.parse_args(argv)
    from pipelines.core.errors import PipelineError

    try:
        return int(args.func(args))
    except PipelineError as exc:  # the message names what is at fault and what to do: no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
