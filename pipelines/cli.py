"""The `pipelines` command: status, demo, up, airflow."""

from __future__ import annotations

import argparse
import json
import sys

from pipelines.config import get_settings


def _status(args: argparse.Namespace) -> int:
    from pipelines.status import format_status, status

    report = status(get_settings())
    print(json.dumps(report, indent=2, default=str) if args.json else format_status(report))
    return 1 if report["spec_errors"] else 0


def _demo(args: argparse.Namespace) -> int:
    from pipelines.demo import main

    return main(reset=args.reset)


def _up(args: argparse.Namespace) -> int:
    from pipelines.up import main

    return main(args.airflow_port, args.mlflow_port)


def _airflow(args: argparse.Namespace) -> int:
    import os
    import subprocess

    from pipelines.config import apply_airflow_environment

    apply_airflow_environment()
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    return subprocess.call([airflow, *args.airflow_args])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipelines", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="champion, table counts, last validation and drift per model")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)
    demo = commands.add_parser("demo", help="run the demo model end to end through Airflow")
    demo.add_argument("--reset", action="store_true", help="delete the pipelines home first")
    demo.set_defaults(func=_demo)
    up = commands.add_parser("up", help="start Airflow (standalone) and the MLflow UI on the pipelines home")
    up.add_argument("--airflow-port", type=int, default=8080)
    up.add_argument("--mlflow-port", type=int, default=5000)
    up.set_defaults(func=_up)
    airflow = commands.add_parser(
        "airflow", help="the Airflow CLI on the pipelines home, e.g. `pipelines airflow dags list`"
    )
    airflow.add_argument("airflow_args", nargs=argparse.REMAINDER)
    airflow.set_defaults(func=_airflow)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
