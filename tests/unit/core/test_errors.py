"""The error model: what a retry may fix (transient) and what it cannot (permanent), for errors of
our own and for the storage libraries' connection errors, raised here by real failed connections."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine

from pipelines.core.errors import (
    BadDataError,
    ConfigError,
    ContractError,
    LakeError,
    NoChampionError,
    NotEnoughDataError,
    PartitionError,
    PermanentError,
    RecordConflictError,
    RegistrationError,
    SchemaError,
    SourceMissingError,
    SourceNotReadyError,
    SpecError,
    StaleDecisionError,
    StorageUnavailableError,
    UnsafeModelError,
    ValidationFailedError,
    VersionNotServableError,
    VersionRefusedError,
    is_transient,
)
from pipelines.core.features import ContractError as FeaturesContractError
from pipelines.core.spec import SpecError as SpecSpecError


@pytest.mark.parametrize(
    "error",
    [
        BadDataError,
        ConfigError,
        ContractError,
        SpecError,
        VersionRefusedError,
        PartitionError,
        LakeError,
        StaleDecisionError,
        RegistrationError,
        VersionNotServableError,
        UnsafeModelError,
        NoChampionError,
        SchemaError,
        RecordConflictError,
        NotEnoughDataError,
        ValidationFailedError,
    ],
)
def test_bad_data_specs_contracts_and_versions_are_permanent(error: type[Exception]) -> None:
    assert issubclass(error, PermanentError)
    if error is not ValidationFailedError:  # built from an outcome; its kind is what matters here
        assert not is_transient(error("x"))


def test_the_modules_raise_the_model_s_own_classes() -> None:
    assert FeaturesContractError is ContractError and SpecSpecError is SpecError


def test_a_source_not_delivered_and_storage_out_of_reach_are_transient() -> None:
    assert is_transient(SourceMissingError("late")) and issubclass(SourceMissingError, SourceNotReadyError)
    assert is_transient(StorageUnavailableError("down"))


def test_a_refused_database_connection_is_transient() -> None:
    import sqlalchemy.exc

    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:9/nothing", connect_args={"connect_timeout": 2})
    with pytest.raises(sqlalchemy.exc.OperationalError) as refused:
        engine.connect()
    assert is_transient(refused.value)


def test_an_unreachable_s3_endpoint_is_transient() -> None:
    import boto3
    import botocore.config
    import botocore.exceptions

    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="k",
        aws_secret_access_key="s",
        region_name="us-east-1",
        config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2),
    )
    with pytest.raises(botocore.exceptions.EndpointConnectionError) as refused:
        client.list_buckets()
    assert is_transient(refused.value)


def test_an_unreachable_tracking_server_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(MlflowException) as refused:
        MlflowClient("http://127.0.0.1:9", registry_uri="http://127.0.0.1:9").get_registered_model("demo_churn")
    assert is_transient(refused.value)


def test_a_bug_is_not_transient() -> None:
    assert not is_transient(KeyError("device_type"))
    assert not is_transient(ValueError("truth value of an array is ambiguous"))
