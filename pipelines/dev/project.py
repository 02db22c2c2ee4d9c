"""`pipelines init DIR`: a new project for a team's own models, outside this repository.

The package is installed (a wheel in any Airflow); the project holds what is the team's: a thin DAG
file per model in dags/, its spec in dags/models/, its suite in expectations/. `new-model` fills it.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.core.errors import ConfigError
from pipelines.core.project import PROJECT_VARIABLE

README = """# {name}: models run by `pipelines`

A project of the `pipelines` package (installed into your Airflow as a wheel; its Models page comes
with it through the `airflow.plugins` entry point).

    dags/               one thin DAG file per model: it builds the model's DAGs from its spec
    dags/models/        the specs (YAML), one per model
    expectations/       the Great Expectations suites, one per model, reviewed like code
    .pipelines/         the embedded home (tables, lake, MLflow, Airflow) when PIPELINES_HOME is unset

## Add a model

    cd {root}           # or: export {variable}={root}
    pipelines new-model my_model --events sql://CONNECTION/TABLE --labels sql://CONNECTION/LABELS \\
        --entity-key id --timestamp event_time --label label \\
        --sample-start 2026-01-01T00:00Z --sample-end 2026-01-29T00:00Z
    pipelines run my_model__train --start 2026-01-28T00:00Z --end 2026-01-29T00:00Z
    pipelines run my_model__score --start 2026-01-29T00:00Z --end 2026-01-29T01:00Z
    pipelines status

## Run it in your Airflow

Install the package into the Airflow image (a requirements file or `pip install pipelines-*.whl`),
point `[core] dags_folder` at `dags/` (or sync this whole folder as the DAGs folder), and set
`{variable}` to this folder on every Airflow component, so tasks find the suites. Storage comes from
the Airflow connections `pipelines_tables` (postgres) and `pipelines_lake` (aws) and PIPELINES_LAKE,
MLFLOW_TRACKING_URI; without them everything stays in `.pipelines/`.
"""

MODELS_README = """Model specs, one YAML file per model, each named after its model; `pipelines new-model` writes
them with their DAG file (one folder up) and their suite (../../expectations/).
"""


def init_project(root: Path) -> list[Path]:
    """Create a project's folders and README under `root`; returns the files written.
    Refuses, writing nothing, when one of them exists already."""
    root = root.resolve()
    files = {
        root / "README.md": README.format(name=root.name, root=root, variable=PROJECT_VARIABLE),
        root / "dags" / "models" / "README.md": MODELS_README,
        root / "expectations" / ".gitkeep": "",
        root / ".gitignore": ".pipelines/\n",
    }
    existing = [str(path) for path in files if path.exists()]
    if existing:
        raise ConfigError(f"{root}: {existing} exist already; init writes into a new or empty folder only")
    written: list[Path] = []
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("x") as handle:  # "x": never replace a file that appeared meanwhile
                handle.write(text)
            written.append(path)
    except OSError:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written
