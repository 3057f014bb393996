"""suggest_runs: the value of candidate runs per FLOP (local normal and simulated), greedy batches under a budget."""

import json

import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from bayescale.cli import main
from bayescale.design import _greedy, _in_order, _LocalInformation, _SimulatedInformation


def _candidates():
    n, ratio = np.meshgrid(np.geomspace(5e7, 2e9, 6), [5.0, 20.0, 80.0])
    return pd.DataFrame({"params": n.ravel(), "tokens": (n * ratio).ravel()})


def _information(draws=3, candidates=4, parameters=3, seed=0):
    rng = np.random.default_rng(seed)
    root = rng.normal(size=(draws, parameters, parameters))
    precision = root @ root.transpose(0, 2, 1) + np.eye(parameters)
    jacobian = rng.normal(size=(draws, candidates, parameters))
    return _LocalInformation(np.linalg.inv(precision), jacobian, rng.normal(size=(draws, parameters)), np.full((draws, candidates), 0.3)), precision


def test_conditioning_adds_the_runs_fisher_information():
    """Observing candidate k adds j j' / noise to each draw's precision (Sherman-Morrison)."""
    information, precision = _information()
    j = information.jacobian[:, 2]
    direct = np.linalg.inv(precision + np.einsum("sp,sq->spq", j, j) / 0.3)
    np.testing.assert_allclose(information.condition(information.covariance, 2), direct, rtol=1e-10)


def test_gains_are_the_information_about_the_target():
    """Each candidate's gain is the draw-averaged 0.5 log(variance before / variance after)."""
    information, _ = _information()
    for k in range(4):
        after = information.condition(information.covariance, k)
        assert information.gains(information.covariance)[k] == pytest.approx(information.information(after), rel=1e-10)


def test_a_repeated_run_is_worth_less_the_second_time():
    information, _ = _information(candidates=1)
    information.jacobian = np.repeat(information.jacobian, 2, axis=1)  # the same run twice
    first = information.gains(information.covariance)
    second = information.gains(information.condition(information.covariance, 0))
    assert first[0] == pytest.approx(first[1]) and second[1] < first[1]  # no double counting


def test_greedy_never_exceeds_the_budget():
    information, _ = _information(candidates=5)
    cost = np.array([3.0, 2.0, 2.0, 1.0, 4.0])
    for per_flop in (True, False):
        for max_repeats in (1, 3):
            chosen, gained = _greedy(information, cost, 4.5, per_flop, max_repeats)
            assert cost[chosen].sum() <= 4.5 and np.all(np.diff(gained) >= 0)
            assert np.bincount(chosen).max() <= max_repeats


def test_greedy_repeats_the_one_informative_run():
    """When only one candidate teaches about the target, a second and third seed of it are
    worth more than the uninformative rest (each repeat still counted for what it adds)."""
    information, _ = _information(candidates=3)
    information.jacobian[:, 1:] = 0.0  # candidates 1 and 2 say nothing about the law
    chosen, gained = _greedy(information, np.ones(3), 10.0, True, 3)
    assert chosen == [0, 0, 0] and gained[0] < gained[1] < gained[2]
    assert _greedy(information, np.ones(3), 10.0, True, 1)[0] == [0]


def test_runs_in_order_skip_what_the_budget_cannot_pay_for():
    """The largest-first plan: candidates in the given order, each once, those too dear skipped."""
    information, _ = _information(candidates=4)
    cost = np.array([1.0, 4.0, 2.0, 3.0])
    chosen, gained = _in_order(information, np.argsort(-cost, kind="stable"), cost, 6.5)
    assert chosen == [1, 2]  # 4, then 3 does not fit in 2.5, 2 does, and 1 no longer fits in 0.5
    assert len(gained) == 2
    # A budget that is the sum of some costs affords them, whatever the order of subtraction.
    cost = np.logspace(19.0, 22.0, 13)[[8, 10, 12, 0]]  # 1e21, 10^21.5, 1e22, 1e19
    budget = float(cost[:3].sum())
    assert budget - cost[2] - cost[1] < cost[0]  # the rounding the check must forgive
    assert _in_order(information, [2, 1, 0, 3], cost, budget)[0] == [2, 1, 0]


def _normal_worlds(noise_sd, worlds=1000, draws=4000, repeats=2, seed=0):
    """Simulated information about theta ~ N(0, 1) from observations theta + N(0, sd^2): the
    conjugate case, where one observation leaves variance 1 / (1 + 1 / sd^2)."""
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(draws)
    truth = rng.choice(draws, worlds, replace=False)
    sd = np.asarray(noise_sd)[None, :, None]
    outcome = theta[truth][None, None, :] + sd * rng.standard_normal((repeats, sd.size, worlds))
    log_likelihood = -0.5 * ((outcome[..., None] - theta) / sd[..., None]) ** 2
    return _SimulatedInformation(theta, log_likelihood, truth)


def test_simulated_gains_match_the_conjugate_normal():
    """An observation with noise sd explains a share 1 / (1 + sd^2) of theta's variance
    (gain 0.5 log(1 + 1 / sd^2) nats); one independent of theta (sd 1e6) explains none. A
    second run of the sd-0.5 candidate explains 1 - (1/9) / (1/5) = 4/9 of what is left.
    Tolerance 0.1 on the share: it is a mean over 1,000 worlds of squared moves of the
    posterior mean, whose sd over 12 seeds was 0.027-0.028 (0.5 x sqrt(2 / 1,000) = 0.022
    for a normal move), so 0.1 is over 3.5 sd."""
    sd = np.array([0.5, 1.0, 2.0, 1e6])
    information = _normal_worlds(sd)
    share = -np.expm1(-2.0 * information.gains(information.start))  # 1 - variance after / before
    np.testing.assert_allclose(share, 1.0 / (1.0 + sd**2), atol=0.1)
    assert share[3] == 0.0  # below the noise floor: none
    second = -np.expm1(-2.0 * information.gains(information.condition(information.start, 0))[0])
    assert second == pytest.approx(4 / 9, abs=0.1)
    # The information after a run, measured on the widths, is the same for a normal target:
    # the width falls by sqrt(1/2) for sd 1 (measured within 0.004 nats over 4 seeds).
    assert information.information(information.condition(information.start, 1)) == pytest.approx(0.5 * np.log(2.0), abs=0.03)


def test_greedy_with_simulated_information_buys_the_informative_runs():
    """Per FLOP, a cheap run that teaches nothing is never bought, though the budget allows it."""
    information = _normal_worlds([0.5, 1e6], worlds=300, draws=2000)
    for per_flop in (True, False):
        chosen, gained = _greedy(information, np.array([1.0, 1e-9]), 2.5, per_flop, 2)
        assert chosen == [0, 0] and 0 < gained[0] < gained[1]


def test_suggest_runs_ranks_and_selects_within_the_budget(small_fit):
    budget = 6 * 1e9 * 2e10
    design = bs.suggest_runs(small_fit, _candidates(), budget, {"params": 7e10, "tokens": 1.4e12})
    table = design.candidates
    assert design.spent <= budget and table.loc[table["selected"], "cost"].sum() == pytest.approx(design.spent)
    assert (table["runs"] == table["selected"]).all()  # each candidate at most once by default
    assert design.selected["order"].tolist() == list(range(1, int(table["selected"].sum()) + 1))
    assert 0 < design.width_95_after < design.width_95_before
    assert (table["expected_gain"] >= 0).all() and np.allclose(table["gain_per_flop"], table["expected_gain"] / table["cost"])
    # The widths after each chosen run can only shrink.
    assert np.all(np.diff(design.selected["width_95_after"].to_numpy()) <= 1e-12)


def test_repeats_are_runs_of_their_own(small_fit):
    budget = 6 * 1e9 * 2e10
    design = bs.suggest_runs(small_fit, _candidates(), budget, {"params": 7e10, "tokens": 1.4e12}, max_repeats=3)
    table, runs = design.candidates, design.selected
    assert table["runs"].max() > 1 and table["runs"].max() <= 3  # on this fit a configuration is worth a second seed
    assert len(runs) == table["runs"].sum() and runs.index.value_counts().to_dict() == table.loc[table["selected"], "runs"].to_dict()
    assert design.spent == pytest.approx(runs["cost"].sum()) and design.spent <= budget
    first = runs.reset_index().groupby("index")["order"].min()
    assert (table.loc[first.index, "order"] == first).all()  # a candidate's order is its first choice


@pytest.mark.parametrize("max_repeats", [0, 1.5, True])
def test_max_repeats_must_be_a_count(small_fit, max_repeats):
    with pytest.raises(ValueError, match="max_repeats"):
        bs.suggest_runs(small_fit, _candidates(), 1e20, {"params": 7e10, "tokens": 1.4e12}, max_repeats=max_repeats)


def test_an_optimal_size_target(small_fit):
    design = bs.suggest_runs(small_fit, _candidates(), 6 * 1e9 * 2e10, {"kind": "optimal_params", "flops": 1e24})
    assert "compute-optimal params" in design.target and design.width_95_after < design.width_95_before


@pytest.mark.parametrize(
    "candidates, budget, message",
    [
        (pd.DataFrame({"params": [1e8, -1e8], "tokens": [2e9, 2e9]}), 1e20, "row"),
        (pd.DataFrame({"params": [1e8]}), 1e20, "missing"),
        (pd.DataFrame({"params": [1e8, 2e8], "tokens": [2e9, 4e9]}), 1e17, "smaller than the cheapest candidate"),
        (pd.DataFrame({"params": [1e8], "tokens": [2e9], "cost": [0.0]}), 1e20, "cost must be positive"),
    ],
)
def test_bad_candidates_and_budgets_name_the_fix(small_fit, candidates, budget, message):
    with pytest.raises(bs.DataError, match=message):
        bs.suggest_runs(small_fit, candidates, budget, {"params": 7e10, "tokens": 1.4e12})


def test_cli_design(small_fit, tmp_path, capsys):
    path = small_fit.save(tmp_path / "fit.nc")
    _candidates().to_csv(tmp_path / "candidates.csv", index=False)
    argv = ["design", str(path), "--candidates", str(tmp_path / "candidates.csv"), "--budget-flops", "1.2e20", "--target-params", "7e10", "--target-tokens", "1.4e12", "--format", "json"]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["spent"] <= 1.2e20 and payload["rows"][0]["selected"] and payload["rows"][0]["order"] == 1
    assert main([*argv, "--max-repeats", "3"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert sum(row["runs"] for row in rows) > sum(row["selected"] for row in rows)  # some configuration twice or more
    assert main([*argv[:5], "1", *argv[6:]]) == 2  # a budget of 1 FLOP buys nothing
    assert "smaller than the cheapest candidate" in capsys.readouterr().err


def test_design_plot_marks_the_selection(small_fit):
    from bayescale.plots import plot_design

    design = bs.suggest_runs(small_fit, _candidates(), 6 * 1e9 * 2e10, {"params": 7e10, "tokens": 1.4e12})
    ax = plot_design(design).axes[0]
    assert len(ax.collections) == 2 and len(ax.texts) == int(design.candidates["selected"].sum())
    repeated = bs.suggest_runs(small_fit, _candidates(), 6 * 1e9 * 2e10, {"params": 7e10, "tokens": 1.4e12}, max_repeats=3)
    labels = [t.get_text() for t in plot_design(repeated).axes[0].texts]
    assert len(labels) == int(repeated.candidates["selected"].sum()) and any("(x" in label for label in labels)
