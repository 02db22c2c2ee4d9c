"""Stage 2: validate staged deliveries with a GX Core checkpoint against expectations/<suite>.json,
then publish them. Validate, then publish: a delivery that fails never replaces a good partition.

Policies: `block` fails and keeps the deliveries in the quarantine zone with their result; `warn`
publishes anyway; `quarantine` splits off the rows that broke a row-level expectation, and the rows
ingest set aside (a value that is no number, an exact copy of a row), keeps them in the quarantine
zone and publishes the rest, recording both counts. The result JSON is kept in the lake
(GX's own store keeps the newest GX_RESULTS_KEPT); Data Docs are rebuilt by the nightly training and
`pipelines data-docs`, not by every hourly run. `ValidationFailedError` names each failed
expectation and sample offending values.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine

from pipelines.core.errors import SpecError, ValidationFailedError
from pipelines.core.intervals import interval_key
from pipelines.core.spec import ModelSpec
from pipelines.stages.ingest import snapshot_sha256
from pipelines.storage import bulk, tables
from pipelines.storage.lake import Lake, partition_key, publish, read_object, write_partition
from pipelines.storage.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailedExpectation:
    expectation: str
    column: str | None
    unexpected_count: int | None
    samples: list[Any]
    rows: list[int] | None = None  # positions of the offending rows, for row-level expectations
    kwargs: dict[str, Any] = field(default_factory=dict)  # the expectation's own, to say what it allowed

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
    rows_checked: int = 0
    rows_quarantined: int = 0
    quarantine_uris: list[str] = field(default_factory=list)
    held_back: list[str] = field(default_factory=list)  # the partitions not published, and their sources
    # Per failed expectation, in the order of `failed`: what it allowed, what each failing partition
    # showed, and how to accept it.
    advice: list[list[str]] = field(default_factory=list)

    def describe_failures(self) -> str:
        lines = [f"suite '{self.suite}': {len(self.failed)} of {self.evaluated} expectations failed"]
        for position, failure in enumerate(self.failed):
            lines.append(f"  - {failure.describe()}")
            lines += self.advice[position] if position < len(self.advice) else []
        lines += [f"  held back: {source}" for source in self.held_back]
        lines.append(f"  result: {self.result_uri}")
        lines.append(f"  data docs: {self.data_docs_path}")
        return "\n".join(lines)


def load_suite_definition(path: Path) -> tuple[dict[str, Any], str]:
    """The suite file as a dict plus the sha256 of its file (for lineage)."""
    if not path.exists():
        raise SpecError(f"expectation suite '{path.stem}' not found: expected {path}")
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
        mismatched = (details.get("details") or {}).get("mismatched")
        if isinstance(mismatched, dict):  # a table's column set: say which are missing and which unexpected
            samples = [
                f"{kind} {sorted(mismatched[kind])}" for kind in ("missing", "unexpected") if mismatched.get(kind)
            ]
        elif not samples and "observed_value" in details:
            samples = [details["observed_value"]]
        if not isinstance(samples, list):
            samples = [samples]
        rows = details.get("unexpected_index_list")
        failures.append(
            FailedExpectation(
                expectation=config["type"],
                column=config["kwargs"].get("column")
                or (",".join(config["kwargs"]["column_list"]) if "column_list" in config["kwargs"] else None),
                unexpected_count=details.get("unexpected_count"),
                samples=[None if pd.api.types.is_scalar(s) and pd.isna(s) else s for s in samples[:5]],
                rows=[int(r) for r in rows]
                if isinstance(rows, list) and all(isinstance(r, int) for r in rows)
                else None,
                kwargs=dict(config["kwargs"]),
            )
        )
    return failures


# Validation results GX keeps in its own store (the lake keeps every one): the newest are enough
# for Data Docs, and an unbounded store makes every later run slower.
GX_RESULTS_KEPT = int(os.environ.get("PIPELINES_GX_RESULTS_KEPT", "200"))


def warm_context(gx_root: Path) -> Any:
    """The GX file context of this home, built once per process (a backfill validates many intervals)
    and again only when the project folder was made anew (its config file is another file then)."""
    config = gx_root / "gx" / "great_expectations.yml"
    return _context(gx_root, config.stat().st_ino if config.exists() else None)


@functools.cache
def _context(gx_root: Path, _config_inode: int | None) -> Any:
    import great_expectations as gx  # slow import (~7 s): only inside the task
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=str(gx_root))
    # tqdm writes to stderr, which Airflow logs as ERROR lines in a task that succeeded.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def _checkpoint(gx_root: Path, suite: Path, suite_sha: str) -> Any:
    """The suite's checkpoint, registered once per process and suite content, and again when GX's
    stores no longer hold what it was registered with (another process saved the suite since)."""
    context = warm_context(gx_root)
    checkpoint = _registered_checkpoint(context, suite, suite_sha)
    if not checkpoint.is_fresh().success:
        _registered_checkpoint.cache_clear()
        checkpoint = _registered_checkpoint(context, suite, suite_sha)
    return checkpoint


@functools.cache
def _registered_checkpoint(context: Any, suite_path: Path, suite_sha: str) -> Any:
    import great_expectations as gx

    definition, _ = load_suite_definition(suite_path)
    suite = suite_path.stem
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
    return context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=f"{suite}_checkpoint",
            validation_definitions=[validation],
            # No Data Docs action: rebuilding the site on every hourly run costs more than the checks.
            # The nightly training builds it, and `pipelines data-docs` on demand.
            actions=[],
            # COMPLETE lists each offending row's index: only deliveries holding one are held back.
            result_format={"result_format": "COMPLETE", "partial_unexpected_count": 5},
        )
    )


def gx_results_dir(gx_root: Path) -> Path:
    return gx_root / "gx" / "uncommitted" / "validations"


def data_docs_dir(gx_root: Path) -> Path:
    """Where GX's file context keeps its default Data Docs site (what `data_docs_url` names)."""
    return gx_root / "gx" / "uncommitted" / "data_docs" / "local_site"


def prune_gx_results(gx_root: Path, keep: int | None = None) -> int:
    """Delete all but the `keep` newest results from GX's store; returns how many went."""
    keep = GX_RESULTS_KEPT if keep is None else keep
    results = sorted(gx_results_dir(gx_root).rglob("*.json"), key=lambda path: path.stat().st_mtime, reverse=True)
    for path in results[keep:]:
        path.unlink(missing_ok=True)
    return max(len(results) - keep, 0)


def build_data_docs(gx_root: Path) -> str:
    """Rebuild the Data Docs site from GX's stored results; returns the site's URL."""
    context = warm_context(gx_root)
    context.build_data_docs()
    return data_docs_url(gx_root)


def data_docs_url(gx_root: Path) -> str:
    docs = warm_context(gx_root).get_docs_sites_urls(only_if_exists=False)
    return str(docs[0]["site_url"]) if docs else ""


def validate_frame(
    frame: pd.DataFrame,
    suite_path: Path,
    gx_root: Path,
    *,
    lake: Lake,
    result_key: str,
    run_name: str,
    data_docs: bool = False,
) -> ValidationOutcome:
    """Run the suite through a GX checkpoint and keep the result JSON; `data_docs` also rebuilds the site."""
    import great_expectations as gx

    _, suite_sha = load_suite_definition(suite_path)
    checkpoint = _checkpoint(gx_root, suite_path, suite_sha)
    # GX copies the frame for every metric; a frame of scattered blocks (columns added one by one, or
    # read from parquet) is consolidated by each copy, so it is consolidated once here, by copying.
    checkpoint_result = checkpoint.run(
        batch_parameters={"dataframe": frame.copy()}, run_id=gx.RunIdentifier(run_name=run_name)
    )
    suite_result = next(iter(checkpoint_result.run_results.values()))
    result = suite_result.to_json_dict()
    lake.put(result_key, json.dumps(result, indent=2, default=str).encode())
    prune_gx_results(gx_root)
    return ValidationOutcome(
        suite=suite_path.stem,
        suite_sha256=suite_sha,
        success=bool(result["success"]),
        evaluated=len(result["results"]),
        failed=_failures(result),
        result_uri=lake.uri_of(result_key),
        data_docs_path=build_data_docs(gx_root) if data_docs else data_docs_url(gx_root),
    )


def failed_by_partition(
    definition: dict[str, Any], partitions: dict[str, pd.DataFrame]
) -> dict[str, list[FailedExpectation]]:
    """Each partition's failed expectations under a suite definition not yet saved anywhere, through
    an ephemeral GX context: `new-model` checks that the suite it infers passes its own sample."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO is hundreds of lines
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    suite = context.suites.add(gx.ExpectationSuite(**definition))
    batch_definition = (
        context.data_sources.add_pandas(name="sample")
        .add_dataframe_asset(name="frames")
        .add_batch_definition_whole_dataframe("whole")
    )
    failed = {}
    for name, frame in partitions.items():
        result = batch_definition.get_batch(batch_parameters={"dataframe": frame.copy()}).validate(suite)
        broken = _failures(result.to_json_dict())
        if broken:
            failed[name] = broken
    return failed


def quarantine_key(spec: ModelSpec, delivery: dict[str, Any]) -> str:
    """Where a delivery's bad rows are kept: beside its partition, in the quarantine zone, by content."""
    start = datetime.fromisoformat(str(delivery["interval_start"]))
    return f"{partition_key(spec.name, 'quarantine', start, spec.partition)}/{delivery['sha256']}"


# One staged delivery, its rows, and their positions in the batch the suite checked.
Staged = tuple[dict[str, Any], pd.DataFrame, range]


def _batch(lake: Lake, deliveries: list[dict[str, Any]]) -> list[Staged]:
    batch, offset = [], 0
    for delivery in deliveries:
        # Arrow-backed text: GX copies the frame for every metric, and halves its time on these.
        frame = read_object(lake, delivery, f"the staged delivery of {delivery['interval_start']}", arrow_text=True)
        batch.append((delivery, frame, range(offset, offset + len(frame))))
        offset += len(frame)
    return batch


def _column_mismatches(batch: list[Staged]) -> list[FailedExpectation]:
    """Deliveries lacking a column other deliveries of the batch have: concatenated, the gap would be
    filled with nulls that a nullable column's expectations accept. No row split can fix this."""
    union = list(dict.fromkeys(column for _, frame, _ in batch for column in frame.columns))
    faults = []
    for delivery, frame, _ in batch:
        missing = [column for column in union if column not in frame.columns]
        if missing:
            where = delivery.get("source", {}).get("uri") or delivery["interval_start"]
            faults.append(FailedExpectation("columns_present_in_every_delivery", ",".join(missing), None, [str(where)]))
    return faults


def _set_aside_at_ingest(deliveries: list[dict[str, Any]]) -> list[FailedExpectation]:
    """Rows ingest set aside (policy quarantine): each delivery's count and reasons, naming column and
    value. They are row faults (rows=[]: none of them is in the batch the suite checked)."""
    return [
        FailedExpectation(
            "rows_set_aside_at_ingest",
            None,
            int(d["set_aside"]["rows"]),
            [f"{d['interval_start']}: {reason}" for reason in d["set_aside"]["reasons"]],
            rows=[],
        )
        for d in deliveries
        if d.get("set_aside")
    ]


def _split_bad_rows(
    spec: ModelSpec, lake: Lake, batch: list[Staged], outcome: ValidationOutcome, bad: set[int]
) -> tuple[int, list[str]]:
    """Policy 'quarantine': publish each delivery's good rows, keep its bad rows in the quarantine zone."""
    quarantined, uris = 0, []
    for delivery, frame, positions in batch:
        is_bad = pd.Index(positions).isin(list(bad))
        base = {key: delivery[key] for key in ("model", "interval_start", "source")}
        if is_bad.any():
            part = write_partition(
                lake,
                quarantine_key(spec, delivery),
                frame[is_bad].reset_index(drop=True),
                {**base, "delivery_sha256": delivery["sha256"], "validation_result": outcome.result_uri},
            )
            quarantined += part.rows
            uris.append(part.uri)
        aside = delivery.get("set_aside")
        if aside:  # rows ingest could not type, and exact copies: staged apart, kept here with their reasons
            record = {**base, **aside, "delivery_sha256": delivery["sha256"], "validation_result": outcome.result_uri}
            uris.append(publish(lake, f"{quarantine_key(spec, delivery)}-set-aside", record).uri)
            quarantined += int(aside["rows"])
        write_partition(
            lake,
            str(delivery["partition"]),
            frame[~is_bad].reset_index(drop=True),
            {
                **base,
                "partition": delivery["partition"],
                "delivery_sha256": delivery["sha256"],
                "quarantined_rows": int(is_bad.sum()) + int((aside or {}).get("rows", 0)),
            },
        )
    return quarantined, uris


def _keep_failed_deliveries(
    spec: ModelSpec, lake: Lake, batch: list[Staged], outcome: ValidationOutcome, bad: set[int] | None
) -> tuple[int, list[str]]:
    """Policy 'block': each delivery holding an offending row goes to the quarantine zone whole, with the
    result; the others passed and are published. `bad` None (a table-level fault) fails every delivery."""
    quarantined, uris = 0, []
    for delivery, frame, positions in batch:
        if bad is not None and bad.isdisjoint(positions):
            publish(lake, str(delivery["partition"]), delivery)
            continue
        record = {**delivery, "validation_result": outcome.result_uri, "failed": [f.describe() for f in outcome.failed]}
        uris.append(publish(lake, quarantine_key(spec, delivery), record).uri)
        quarantined += len(frame)
    return quarantined, uris


ADVICE_PARTITIONS = 5  # partitions named per failed expectation; the rest are counted


def failure_advice(
    spec: ModelSpec, batch: list[Staged], failed: list[FailedExpectation], start: datetime, end: datetime
) -> list[list[str]]:
    """Per failed expectation of the suite: what it allowed, what each failing partition showed (the
    first ADVICE_PARTITIONS), and the exact edit (or command) that accepts it. Faults outside the
    suite (a column missing from one delivery, rows set aside at ingest) get none."""
    from pipelines.stages.suites import Widening, allowed, find_expectation, observed, suite_command_hint, widened

    definition, _ = load_suite_definition(spec.suite_path)
    path = str(spec.suite_path)
    advice = []
    for failure in failed:
        index = find_expectation(definition, failure.expectation, failure.kwargs)
        lines: list[str] = []
        advice.append(lines)
        if index is None:
            continue
        kind, kwargs = failure.expectation, definition["expectations"][index]["kwargs"]
        offending = set(failure.rows or [])
        where = [
            (str(d["interval_start"]), frame)
            for d, frame, positions in batch
            if failure.rows is None or not offending.isdisjoint(positions)
        ]
        lines.append(f"    expectation {index + 1} allowed {allowed(kind, kwargs)}")
        after: dict[str, Any] | None = kwargs
        for shown, (partition, frame) in enumerate(where):
            if shown < ADVICE_PARTITIONS:
                lines.append(f"    observed {observed(kind, kwargs, frame)} in the partition starting {partition}")
            after = widened(kind, after, frame) if after is not None else None
        if len(where) > ADVICE_PARTITIONS:
            lines.append(f"    ... and {len(where) - ADVICE_PARTITIONS} more partition(s)")
        if after != kwargs:
            edit = Widening(index, kind, kwargs, after).edit(path)
            lines.append(f"    to accept: {edit}, or run `{suite_command_hint(spec, start, end)}`")
    return advice


def validate_and_publish(
    spec: ModelSpec,
    settings: Settings,
    engine: Engine,
    deliveries: list[dict[str, Any]],
    start: datetime,
    end: datetime,
    *,
    dag_id: str,
    dag_run_id: str,
    data_docs: bool = False,
) -> ValidationOutcome:
    """Validate the staged deliveries of [start, end) as one batch, record the outcome, apply the spec's policy.

    Only what passes is published as the current partitions; a delivery that fails under 'block'
    raises ValidationFailedError and leaves the published partitions as they were.
    """
    batch = _batch(settings.lake, deliveries)
    # One delivery (an hour's file) is the batch as it is: a concatenation would copy it once more.
    frame = batch[0][1] if len(batch) == 1 else pd.concat([rows for _, rows, _ in batch], ignore_index=True)
    key = interval_key(start, end)
    # One result per batch content: a later delivery of the interval never overwrites the result a
    # quarantined delivery points to, and the same batch validated again lands on the same key.
    result_key = f"{spec.name}/validation/{dag_id}/{key}-{snapshot_sha256(deliveries)[:16]}.json"
    policy = spec.validation_policy
    outcome = validate_frame(
        frame,
        spec.suite_path,
        settings.gx_root,
        lake=settings.lake,
        result_key=result_key,
        run_name=f"{dag_id} {key}",
        data_docs=data_docs,
    )
    faults = _column_mismatches(batch)
    set_aside = _set_aside_at_ingest(deliveries)
    outcome = replace(
        outcome,
        rows_checked=len(frame) + sum(f.unexpected_count or 0 for f in set_aside),
        success=outcome.success and not faults and not set_aside,
        failed=[*faults, *set_aside, *outcome.failed],
    )
    table_level = [f for f in outcome.failed if f.rows is None]
    bad = None if table_level else {row for failure in outcome.failed for row in failure.rows or []}
    if outcome.success or policy == "warn":
        for delivery in deliveries:
            publish(settings.lake, str(delivery["partition"]), delivery)
    elif policy == "quarantine" and bad is not None:
        quarantined, uris = _split_bad_rows(spec, settings.lake, batch, outcome, bad)
        outcome = replace(outcome, rows_quarantined=quarantined, quarantine_uris=uris)
    else:  # block, or quarantine of a fault no row split can fix (a missing column, too few rows)
        quarantined, uris = _keep_failed_deliveries(spec, settings.lake, batch, outcome, bad)
        held_back = [
            f"{d['interval_start']}" + (f" from {d['source']['uri']}" if d.get("source", {}).get("uri") else "")
            for d, _, positions in batch
            if bad is None or not bad.isdisjoint(positions)
        ]
        advice = failure_advice(spec, batch, outcome.failed, start, end)
        outcome = replace(
            outcome, rows_quarantined=quarantined, quarantine_uris=uris, held_back=held_back, advice=advice
        )
    record_validation(spec, engine, outcome, start, end, dag_id=dag_id, dag_run_id=dag_run_id)
    log.info("validation result: %s; Data Docs: %s", outcome.result_uri, outcome.data_docs_path)
    if outcome.success:
        return outcome
    if policy == "warn":
        log.warning("validation policy 'warn': published despite failures\n%s", outcome.describe_failures())
    elif policy == "quarantine" and bad is not None:
        log.warning(
            "validation policy 'quarantine': %d of %d rows kept aside in %s, the rest published\n%s",
            outcome.rows_quarantined,
            outcome.rows_checked,
            ", ".join(outcome.quarantine_uris),
            outcome.describe_failures(),
        )
    else:
        raise ValidationFailedError(outcome)
    return outcome


def record_validation(
    spec: ModelSpec,
    engine: Engine,
    outcome: ValidationOutcome,
    start: datetime,
    end: datetime,
    *,
    dag_id: str,
    dag_run_id: str,
) -> None:
    bulk.upsert(
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
                "rows_checked": outcome.rows_checked,
                "rows_quarantined": outcome.rows_quarantined,
                "quarantine_uri": json.dumps(outcome.quarantine_uris) if outcome.quarantine_uris else None,
            }
        ],
        key=["model_name", "dag_id", "interval_start", "interval_end"],
    )
