import numpy as np
import pandas as pd
import pytest

from pipelines.core.features import ContractError, FeatureContract, prepare_features, unseen_category_counts

CONTRACT = FeatureContract(numeric=["b_num", "a_num"], categorical={"z_cat": ["x", "y"], "c_cat": ["p"]})


def test_contract_keeps_column_order_through_json() -> None:
    again = FeatureContract.from_json(CONTRACT.to_json())
    assert again == CONTRACT
    assert again.columns == ["b_num", "a_num", "z_cat", "c_cat"]


def test_prepare_orders_types_and_maps_unseen_to_missing() -> None:
    frame = pd.DataFrame(
        {"a_num": [1, 2], "z_cat": ["x", "new"], "b_num": [0.5, None], "c_cat": [None, "p"], "extra": [9, 9]}
    )
    prepared = prepare_features(frame, CONTRACT)
    assert list(prepared.columns) == CONTRACT.columns
    assert prepared["a_num"].dtype == "float64"
    assert list(prepared["z_cat"].cat.categories) == ["x", "y"]
    assert prepared["z_cat"].isna().tolist() == [False, True]
    assert unseen_category_counts(frame, CONTRACT) == {"z_cat": 1, "c_cat": 0}


def test_missing_column_is_named() -> None:
    with pytest.raises(ContractError, match=r"missing feature column\(s\) \['c_cat'\]"):
        prepare_features(pd.DataFrame({"a_num": [1], "b_num": [1], "z_cat": ["x"]}), CONTRACT)


def test_wrong_type_is_named() -> None:
    frame = pd.DataFrame({"a_num": ["1"], "b_num": [1.0], "z_cat": ["x"], "c_cat": ["p"]})
    with pytest.raises(ContractError, match="'a_num' must be numeric"):
        prepare_features(frame, CONTRACT)


def test_training_and_serving_agree_through_xgboost() -> None:
    import xgboost as xgb

    from pipelines.core.features import CONTRACT_ATTRIBUTE, contract_of, predict

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "a_num": rng.normal(size=200),
            "b_num": rng.normal(size=200),
            "z_cat": rng.choice(["x", "y"], 200),
            "c_cat": ["p"] * 200,
        }
    )
    label = ((frame["a_num"] > 0) ^ (frame["z_cat"] == "y")).astype(int)
    booster = xgb.train(
        {"tree_method": "hist", "max_cat_to_onehot": 1},
        xgb.DMatrix(prepare_features(frame, CONTRACT), label=label, enable_categorical=True),
        20,
    )
    booster.set_attr(**{CONTRACT_ATTRIBUTE: CONTRACT.to_json()})
    restored = xgb.Booster()
    restored.load_model(bytearray(booster.save_raw("json")))
    shuffled = frame[["c_cat", "z_cat", "b_num", "a_num"]]
    np.testing.assert_allclose(predict(restored, contract_of(restored), shuffled), predict(booster, CONTRACT, frame))


def test_training_data_lacking_a_spec_feature_is_named() -> None:
    from pipelines.core.features import build_contract
    from pipelines.core.spec import FeatureSpec, load_spec
    from tests import REPO_ROOT

    spec = load_spec(REPO_ROOT / "dags" / "models" / "demo_churn.yaml")
    wider = spec.model_copy(
        update={"features": FeatureSpec(numeric=spec.features.numeric, categorical=["plan", "device_type"])}
    )
    frame = pd.DataFrame({**{c: [1.0] for c in spec.features.numeric}, "plan": ["basic"]})
    with pytest.raises(
        ContractError, match=r"demo_churn: the training data lacks feature column\(s\) \['device_type'\]"
    ):
        build_contract(wider, frame)


def test_class_probabilities_round_trip_exactly_through_their_json_text() -> None:
    import json

    from pipelines.core.features import parse_probabilities, probabilities_json

    classes = ["low", 'say "hi"', "high"]
    probabilities = np.random.default_rng(0).dirichlet([1, 1, 1], 1000)
    text = probabilities_json(probabilities, classes)
    assert json.loads(text[0]) == dict(zip(classes, probabilities[0].tolist(), strict=True))
    assert (parse_probabilities(pd.Series(text), classes) == probabilities).all()
    # Another version's class order, and a class it never knew (probability 0).
    reordered = parse_probabilities(pd.Series(text), ["high", "low", "new"])
    assert (reordered[:, 0] == probabilities[:, 2]).all() and (reordered[:, 2] == 0).all()
