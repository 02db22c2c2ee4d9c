"""A team's project: where its models are described, never the package's own folder.

A project holds `dags/` (one thin DAG file per model), `dags/models/` (the specs) and
`expectations/` (the suites); `pipelines init DIR` creates one. It is found through
PIPELINES_PROJECT, else the current directory or the nearest folder above it that holds
`dags/models/`; a spec file finds its own project from where it lies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_VARIABLE = "PIPELINES_PROJECT"


@dataclass(frozen=True)
class Project:
    root: Path
    found_by: str  # how it was found, for the CLI to say

    @property
    def dags_dir(self) -> Path:
        return self.root / "dags"

    @property
    def specs_dir(self) -> Path:
        return self.dags_dir / "models"

    @property
    def expectations_dir(self) -> Path:
        return self.root / "expectations"

    def suite_path(self, suite: str) -> Path:
        return self.expectations_dir / f"{suite}.json"


def find_project(start: Path | None = None) -> Project:
    """PIPELINES_PROJECT, else `start` (the current directory) or the nearest folder above it with
    `dags/models/`, else `start` itself (commands that need a model then say where they looked)."""
    if explicit := os.environ.get(PROJECT_VARIABLE):
        return Project(Path(explicit).resolve(), PROJECT_VARIABLE)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dags" / "models").is_dir():
            return Project(folder, "the current directory" if folder == here else f"a folder above {here}")
    return Project(here, f"the current directory ({PROJECT_VARIABLE} unset, no dags/models/ here or above)")


def project_of_spec(spec_path: Path) -> Project | None:
    """The project a spec file lies in: the nearest folder above it with `expectations/`
    (`<project>/dags/models/<name>.yaml`); None for a spec lying outside any project."""
    for folder in spec_path.resolve().parents[:3]:
        if (folder / "expectations").is_dir():
            return Project(folder, f"the location of {spec_path}")
    return None
