import numpy as np
import pandas as pd
import pytest

from bayescale import DataError, RunTable
from bayescale.laws import get_law

CHINCHILLA = get_law("chinchilla")


def frame(**overrides):
    base = {"params": [1e8, 2e8, 4e8], "tokens": [2e9, 4e9, 8e9], "loss": [3.0, 2.8, 2.6]}
    base.update(overrides)
    return pd.DataFrame(base)


def test_flops_and_family_are_derived():
    runs = RunTable(frame())
    assert np.allclose(runs.data["flops"], 6 * runs.data["params"] * runs.data["tokens"])
    assert runs.families == ["default"]
    assert len(runs) == 3


def test_given_flops_are_kept():
    runs = RunTable(frame(flops=[1.0, 2.0, 3.0]))
    assert runs.data["flops"].tolist() == [1.0, 2.0, 3.0]


def test_misspelt_column_gets_did_you_mean():
    with pytest.raises(DataError, match="did you mean 'params'"):
        RunTable(frame().rename(columns={"params": "parms"}))


def test_wrong_case_column_is_named():
    with pytest.raises(DataError, match="did you mean 'loss'"):
        RunTable(frame().rename(columns={"loss": "Loss"}))


def test_extra_columns_are_kept_as_metadata():
    runs = RunTable(frame(model=["a", "b", "c"]))
    assert runs.data["model"].tolist() == ["a", "b", "c"]


def test_missing_loss_column_names_the_fix():
    runs = RunTable(frame().drop(columns="loss"))
    with pytest.raises(DataError, match="no 'loss' column"):
        runs.require(CHINCHILLA.inputs, CHINCHILLA.exponents)


def test_non_positive_values_give_row_numbers():
    with pytest.raises(DataError, match=r"'params' has 1 non-positive values \(rows 1 of"):
        RunTable(frame(params=[1e8, -2e8, 4e8]))


def test_csv_errors_give_line_numbers(tmp_path):
    path = tmp_path / "runs.csv"
    frame(loss=[3.0, np.nan, 2.6]).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"'loss' has 1 missing or non-numeric values \(lines 3 of"):
        RunTable.from_csv(path)


def test_text_in_numeric_column_is_rejected():
    with pytest.raises(DataError, match="non-numeric"):
        RunTable(frame(tokens=["2e9", "lots", "8e9"]))


def test_accuracy_must_be_a_fraction():
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        RunTable(frame(accuracy=[0.2, 45.0, 0.5]))


def test_correct_cannot_exceed_items():
    with pytest.raises(DataError, match="'correct' exceeds 'n_items'"):
        RunTable(frame(correct=[5, 50, 7], n_items=[10, 10, 10]))


def test_duplicated_rows_are_rejected():
    with pytest.raises(DataError, match="1 rows identical"):
        RunTable(pd.concat([frame(), frame().iloc[[0]]]))


def test_single_size_cannot_identify_exponent():
    runs = RunTable(frame(params=[1e8, 1e8, 1e8]))
    with pytest.raises(DataError, match="single value of 'params'.*'alpha'"):
        runs.require(CHINCHILLA.inputs, CHINCHILLA.exponents)


def test_missing_family_values_are_rejected():
    with pytest.raises(DataError, match="'family' has missing values"):
        RunTable(frame(family=["a", None, "a"]))


def test_empty_table_is_rejected():
    with pytest.raises(DataError, match="no rows"):
        RunTable(frame().iloc[:0])


def test_drop_says_how_many(capsys):
    runs = RunTable(frame()).drop(np.array([True, False, False]), "a test reason")
    assert len(runs) == 2
    assert "dropped 1 of 3 rows: a test reason" in capsys.readouterr().err


def test_hash_names_the_data():
    assert RunTable(frame()).hash() == RunTable(frame()).hash()
    assert RunTable(frame()).hash() != RunTable(frame(loss=[3.0, 2.8, 2.61])).hash()


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        RunTable.from_csv(tmp_path / "nope.csv")
