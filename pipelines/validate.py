"""Stage 2: validate a snapshot with a GX Core checkpoint against expectations/<suite>.json.

The result JSON is kept in the lake and Data Docs are rebuilt under the GX project folder.
`ValidationFailed` names each failed expectation and sample offending values.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine

from pipelines import tables
from pipelines.config import REPO_ROOT, Settings
from pipelines.intervals import hours_between, interval_key
from pipelines.lake import Lake, read_hours
from pipelines.spec import ModelSpec

log = logging.getLogger(__name__)

EXPECTATIONS_DIR = REPO_ROOT / "expectations"


class ValidationFailed(RuntimeError):
    """The data broke its suite; the message lists each failed expectation."""

    def __init__(self, outcome: ValidationOutcome) -> None:
        self.outcome = outcome
        super().__init__(outcome.describe_failures())


@dataclass(frozen=True)
class FailedExpectation:
    expectation: str
    column: str | None
    unexpected_count: int | None
    samples: list[Any]

    def describe(self) -> str:
        where = f" on column '{self.column}'" if self.column else ""
        count = f" ({self.unexpected_count} unexpected)" if self.unexpected_count is not None else ""
        samples = f", e.g. {self.samples}" if self.samples else ""
        return f"{self.expectation}{where} failed{count}{samples}"


@dataclass(frozen=True)
class ValidationOutcome:
    suite: str
    suite_sha256: str
    success: bool
    evaluated: int
    failed: list[FailedExpectation] = field(default_factory=list)
    result_uri: str = ""
    data_docs_path: str = ""

    def describe_failures(self) -> str:
        lines = [f"suite '{self.suite}': {len(self.failed)} of {self.evaluated} expectations failed"]
        lines += [f"  - {failure.describe()}" for failure in self.failed]
        lines.append(f"  result: {self.result_uri}")
        lines.append(f"  data docs: {self.data_docs_path}")
        return "\n".join(lines)


def suite_file(suite: str) -> Path:
    return EXPECTATIONS_DIR / f"{suite}.json"


def load_suite_definition(suite: str) -> tuple[dict[str, Any], str]:
    """The suite as a dict plus the sha256 of its file (for lineage)."""
    path = suite_file(suite)
    if not path.exists():
        raise FileNotFoundError(f"expectation suite '{suite}' not found: expected {path}")
    raw = path.read_bytes()
    return json.loads(raw), hashlib.sha256(raw).hexdigest()


def _failures(result: dict[str, Any]) -> list[FailedExpectation]:
    failures = []
    for item in result["results"]:
        if item["success"]:
            continue
        config = item["expectation_config"]
        details = item.get("result") or {}
        samples = details.get("partial_unexpected_list") or []
        if not samples and "observed_value" in details:
            samples = [details["observed_value"]]
        failures.append(
            FailedExpectation(
                expectation=config["type"],
                column=config["kwargs"].get("column")
                or (",".join(config["kwargs"]["column_list"]) if "column_list" in config["kwargs"] else None),
                unexpected_count=details.get("unexpected_count"),
                samples=[None if pd.isna(s) else s for s in samples[:5]] if isinstance(samples, list) else [samples],
            )
        )
    return failures


def validate_frame(
    frame: pd.DataFrame, suite: str, gx_root: Path, lake: Lake, result_key: str, run_name: str
) -> ValidationOutcome:
    """Run the suite through a GX checkpoint, keep the result JSON and refresh Data Docs."""
    import great_expectations as gx  # slow import (~20 s): only inside the task

    definition, suite_sha = load_suite_definition(suite)
    context = gx.get_context(mode="file", project_root_dir=str(gx_root))
    gx_suite = context.suites.add_or_update(gx.ExpectationSuite(**definition))

    source = context.data_sources.add_or_update_pandas(name="pipelines")
    asset_name = f"{suite}_frames"
    try:
        asset = source.get_asset(asset_name)
    except LookupError:
        asset = source.add_dataframe_asset(name=asset_name)
    try:
        batch_definition = asset.get_batch_definition("whole_frame")
    except KeyError:
        batch_definition = asset.add_batch_definition_whole_dataframe("whole_frame")

    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=f"{suite}_validation", data=batch_definition, suite=gx_suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=f"{suite}_checkpoint",
            validation_definitions=[validation],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
        )
    )
    checkpoint_result = checkpoint.run(
        batch_parameters={"dataframe": frame}, run_id=gx.RunIdentifier(run_name=run_name)
    )
    suite_result = next(iter(checkpoint_result.run_results.values()))
    result = suite_result.to_json_dict()
    lake.put(result_key, json.dumps(result, indent=2, default=str).encode())

    docs = context.get_docs_sites_urls()
    return ValidationOutcome(
        suite=suite,
        suite_sha256=suite_sha,
        success=bool(result["success"]),
        evaluated=len(result["results"]),
        failed=_failures(result),
        result_uri=lake.uri_of(result_key),
        data_docs_path=str(docs[0]["site_url"]) if docs else "",
    )


def validate_snapshot(
    spec: ModelSpec, settings: Settings, engine: Engine, start: datetime, end: datetime, dag_id: str, dag_run_id: str
) -> ValidationOutcome:
    """Validate the raw partitions of [start, end), record the outcome, then apply the spec's policy.

    Policy 'block' raises ValidationFailed (nothing downstream runs); 'warn' logs and goes on.
    """
    frame = read_hours(settings.lake, spec.name, "raw", hours_between(start, end))
    key = interval_key(start, end)
    result_key = f"{spec.name}/validation/{dag_id}/{key}.json"
    outcome = validate_frame(frame, spec.suite, settings.gx_root, settings.lake, result_key, f"{dag_id} {key}")
    tables.upsert(
        engine,
        tables.validation_runs,
        [
            {
                "model_name": spec.name,
                "interval_start": start,
                "interval_end": end,
                "dag_id": dag_id,
                "dag_run_id": dag_run_id,
                "suite": spec.suite,
                "success": outcome.success,
                "failed_expectations": json.dumps([f.describe() for f in outcome.failed]),
                "result_path": outcome.result_uri,
                "validated_at": datetime.now(UTC),
            }
        ],
        key=["model_name", "dag_id", "interval_start", "interval_end"],
    )
    log.info("validation result: %s; Data Docs: %s", outcome.result_uri, outcome.data_docs_path)
    if not outcome.success:
        if spec.validation_policy == "block":
            raise ValidationFailed(outcome)
        log.warning("validation policy 'warn': continuing despite failures\n%s", outcome.describe_failures())
    return outcome
