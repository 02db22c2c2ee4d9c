from pathlib import Path

import pytest
import yaml

from pipelines.config import REPO_ROOT
from pipelines.spec import SpecError, load_spec

DEMO_SPEC = REPO_ROOT / "dags" / "models" / "demo_churn.yaml"


def write_spec(tmp_path: Path, name: str, **changes: object) -> Path:
    raw = yaml.safe_load(DEMO_SPEC.read_text())
    raw.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_demo_spec_loads_with_tz_aware_start() -> None:
    spec = load_spec(DEMO_SPEC)
    assert spec.name == "demo_churn"
    assert spec.start_date.tzinfo is not None
    assert spec.label.delay_hours == 6
    assert "plan" in spec.features.categorical


def test_wrong_field_names_file_and_field(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "demo_churn", training={"window_days": 0})
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert str(path) in str(error.value)
    assert "training.window_days" in str(error.value)


def test_unknown_field_is_rejected(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "demo_churn", schedulez={"train": "@daily"})
    with pytest.raises(SpecError, match="field 'schedulez'"):
        load_spec(path)


def test_feature_listed_twice_is_rejected(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "demo_churn", features={"numeric": ["plan"], "categorical": ["plan"]})
    with pytest.raises(SpecError, match="both numeric and categorical"):
        load_spec(path)


def test_name_must_match_file(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "other_model")
    with pytest.raises(SpecError, match="field 'name' is 'demo_churn'"):
        load_spec(path)


def test_invalid_yaml_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)
