"""One error model for the whole pipeline.

Every error the pipeline raises on purpose is a `PipelineError` whose message names what is at
fault and where: the file or partition URI, the column, the model and version, the spec file and
field. It is either permanent (a retry cannot fix it: the task fails at once) or transient (a
retry may fix it: the task is retried). `is_transient` also sorts the storage libraries' own
connection errors, so the task wrapper needs no list of its own.
"""

from __future__ import annotations

import errno
from typing import Any, Protocol


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""

    transient = False


class PermanentError(PipelineError):
    """A retry cannot fix it: bad data, a bad spec, a broken contract, a refused version."""


class TransientError(PipelineError):
    """A retry may fix it: storage busy or unreachable, a source that has not delivered yet."""

    transient = True


class BadDataError(PermanentError):
    """A source file, label file or lake object is unreadable or breaks the data's rules."""


class SpecError(PermanentError):
    """A model spec is missing, unreadable or invalid (the message names the file and field)."""


class ConfigError(PermanentError):
    """A setting or an Airflow connection names storage the pipeline cannot use."""


class ContractError(PermanentError):
    """The data does not match what the model was trained on (a missing or retyped column)."""


class VersionRefusedError(PermanentError):
    """A model version cannot be used: missing, not READY, unreadable or unsafe."""


class SourceNotReadyError(TransientError):
    """The source has not delivered a file for an interval (yet)."""


class StorageUnavailableError(TransientError):
    """The tables database, the lake or the tracking server did not answer."""


# Errors of particular stages, each under the kind it is.


class PartitionError(BadDataError):
    """A partition is missing, incomplete or does not match its manifest."""


class LakeError(PermanentError):
    """The lake itself cannot be used (no such bucket, refused credentials, bad URI)."""


class SchemaError(PermanentError):
    """The tables' schema is not the revision this code needs; `pipelines db upgrade` brings it there."""


class RecordConflictError(BadDataError):
    """A write would change values already recorded under the same key; the record is never rewritten."""

    def __init__(self, message: str, samples: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.samples = samples or []  # the recorded rows at stake (key and values), for a caller to name


class SourceMissingError(SourceNotReadyError):
    """The source has not delivered an interval's data (yet)."""


class SourceOverdueError(PermanentError):
    """The source has not delivered an interval's data by its deadline: waiting longer will not help."""


class RegistrationError(PermanentError):
    """The model version could not be registered or never became READY."""


class VersionNotServableError(VersionRefusedError):
    """A version cannot serve: missing, not READY, its run is gone, or it does not load as xgboost."""


class UnsafeModelError(VersionNotServableError):
    """A version whose MLmodel names code, a foreign class or format, or whose file is not the one trained."""


class NoChampionError(VersionRefusedError):
    """Scoring needs a champion; run the train DAG first (or roll back to a version)."""


class NotEnoughDataError(BadDataError):
    """The training window holds too few labelled rows to train or to evaluate."""


class DescribedOutcome(Protocol):
    """A validation outcome (pipelines.stages.validate.ValidationOutcome) as the error reads it."""

    def describe_failures(self) -> str: ...


class ValidationFailedError(BadDataError):
    """The data broke its suite; the message lists each failed expectation."""

    def __init__(self, outcome: DescribedOutcome) -> None:
        self.outcome = outcome
        super().__init__(outcome.describe_failures())


class StaleDecisionError(PermanentError):
    """The champion moved between the gate's decision and the promotion; the decision no longer holds."""


class RunInProgressError(PermanentError):
    """Another `pipelines run` is running the same DAG over the same interval."""


def _chain(exc: BaseException) -> list[BaseException]:
    """The error and those it was raised from, outermost first."""
    seen: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and all(link is not s for s in seen):
        seen.append(link)
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)
    return seen


# A machine that refuses to store anything: waiting and retrying cannot fix it, a person must.
_DISK_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
_SQLITE_FAULTS = {
    "attempt to write a readonly database": "the tables database is read-only to this process",
    "database or disk is full": "the tables database's disk is full",
    "unable to open database file": "the tables database file cannot be opened (a missing folder or no permission)",
}


def machine_fault(exc: BaseException, tables: str | None = None) -> str | None:
    """What is wrong with the machine, in words naming the file (`tables`: the tables' URL, which a
    database error does not name), when storage refused a write for good (a full disk, a read-only
    file or database); None for anything else."""
    for link in _chain(exc):
        if isinstance(link, OSError) and link.errno in _DISK_ERRNOS:
            where = f" writing {link.filename}" if link.filename else ""
            return f"{_DISK_ERRNOS[link.errno]}{where} ({link.strerror or link})"
        text = str(link)
        for marker, meaning in _SQLITE_FAULTS.items():
            if marker in text:
                return f"{meaning}{f' ({tables})' if tables else ''} (sqlite: {marker})"
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether a retry may fix this error: ours say so; another is transient when it, or an error it
    was raised from (MLflow wraps the refused connection of its HTTP client), is connection trouble,
    and not a machine that refuses to store anything (`machine_fault`)."""
    if isinstance(exc, PipelineError):
        return exc.transient
    if machine_fault(exc) is not None:
        return False
    return any(_connection_trouble(link) for link in _chain(exc))


def _connection_trouble(exc: BaseException) -> bool:
    import botocore.exceptions
    import sqlalchemy.exc

    return isinstance(
        exc,
        ConnectionError  # refused, reset, aborted
        | TimeoutError
        # a lost connection, a locked SQLite file, a server restarting, a pool exhausted
        | sqlalchemy.exc.OperationalError
        | sqlalchemy.exc.InterfaceError
        | sqlalchemy.exc.TimeoutError
        | botocore.exceptions.ConnectionError
        | botocore.exceptions.HTTPClientError,
    )
