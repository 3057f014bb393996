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


def _checkpoints(**extra):
    """Two runs of one size (seeds 0 and 1), five checkpoints each at 10%-100% of 1e10 tokens."""
    steps = np.array([1, 2, 4, 7, 10])
    frame = pd.DataFrame({
        "params": 1e8,
        "seed": np.repeat([0, 1], 5),
        "step": np.tile(steps, 2),
        "tokens": np.tile(steps * 1e9, 2),
        "loss": np.tile([4.0, 3.6, 3.3, 3.1, 3.0], 2) + np.repeat([0.0, 0.01], 5),
    })
    return RunTable(frame.assign(**extra))


def test_checkpoints_group_into_runs_and_fractions():
    runs = _checkpoints()
    assert runs.run_ids().tolist() == [0] * 5 + [1] * 5
    np.testing.assert_allclose(runs.fraction_of_training()[:5], [0.1, 0.2, 0.4, 0.7, 1.0])


def test_early_checkpoints_are_dropped_and_counted(capsys):
    kept = _checkpoints().drop_early_checkpoints(min_fraction_of_training=0.3)
    assert len(kept) == 6
    assert "dropped 4 of 10 rows: checkpoints before 30% of their run's tokens" in capsys.readouterr().err
    assert len(_checkpoints().drop_early_checkpoints(min_tokens=5e9)) == 4


def test_ambiguous_runs_and_empty_results_name_the_fix():
    doubled = pd.concat([_checkpoints().data, _checkpoints().data.assign(tokens=lambda f: f["tokens"] * 2)])
    with pytest.raises(DataError, match="add a 'run' column"):
        RunTable(doubled).run_ids()
    assert RunTable(doubled.assign(run=np.repeat(["a", "b", "c", "d"], 5))).run_ids().max() == 3
    with pytest.raises(DataError, match="relax it"):
        _checkpoints().drop_early_checkpoints(min_tokens=1e12)


def test_subset_equals_a_table_built_from_the_same_rows():
    # As from a CSV file: messages name file lines, which a subset's rows no longer are.
    runs = RunTable(pd.DataFrame({"params": [1e8, 2e8, 4e8, 8e8], "tokens": [2e9, 4e9, 8e9, 1.6e10], "loss": [3.2, 3.0, 2.8, 2.7], "family": ["a", "b", "a", "b"]}), row_offset=2, row_label="line")
    mask = runs.data["family"].to_numpy() == "a"
    by_mask, by_position = runs.subset(mask, source="family a"), runs.subset(np.flatnonzero(mask), source="family a")
    rebuilt = RunTable(runs.data[mask], source="family a")
    for part in (by_mask, by_position):
        pd.testing.assert_frame_equal(part.data, rebuilt.data)
        assert part.hash() == rebuilt.hash() and part.source == "family a"
        assert (part._row_offset, part._row_label) == (rebuilt._row_offset, rebuilt._row_label) == (0, "row")
    with pytest.raises(DataError, match="no rows"):
        runs.subset(np.zeros(4, bool), source="nothing")
