"""What `pipelines suite --accept` and a blocked interval's advice would write, per expectation kind."""

import json

import pandas as pd

from pipelines.stages.suites import Widening, widened


def test_each_kind_is_widened_just_enough_for_the_rows_to_pass() -> None:
    rows = pd.DataFrame({"plan": ["basic", "gold", None], "calls": [1, 7, None], "tier": [1, 3, 3]})
    in_set = widened("expect_column_values_to_be_in_set", {"column": "plan", "value_set": ["basic"]}, rows)
    assert in_set == {"column": "plan", "value_set": ["basic", "gold"]}
    numbers = widened("expect_column_values_to_be_in_set", {"column": "tier", "value_set": [1, 2]}, rows)
    assert json.dumps(numbers) == '{"column": "tier", "value_set": [1, 2, 3]}'  # numbers stay numbers
    between = {"column": "calls", "min_value": 0, "max_value": 5}
    assert widened("expect_column_values_to_be_between", between, rows) == {**between, "max_value": 7.0}
    # A third of the rows null: allow that share and 5 points more; a column almost all null gets no check.
    assert widened("expect_column_values_to_not_be_null", {"column": "plan"}, rows) == {
        "column": "plan",
        "mostly": 0.616,
    }
    assert widened("expect_column_values_to_not_be_null", {"column": "plan"}, rows.iloc[2:]) is None
    columns = {"column_set": ["plan", "calls"], "exact_match": True}
    assert widened("expect_table_columns_to_match_set", columns, rows)["column_set"] == ["plan", "calls", "tier"]


def test_the_edit_names_the_expectation_as_a_person_counts_it() -> None:
    widening = Widening(
        0,
        "expect_column_values_to_be_between",
        {"column": "calls", "max_value": 5},
        {"column": "calls", "max_value": 7},
    )
    assert widening.edit("expectations/m.json") == (
        'set {"max_value": 7} in expectation 1 (expect_column_values_to_be_between, counting from 1) of expectations/m.json'
    )
    removal = Widening(3, "expect_column_values_to_not_be_null", {"column": "gust"}, None)
    assert removal.edit("m.json").startswith("remove expectation 4 (expect_column_values_to_not_be_null")
