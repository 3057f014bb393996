"""Downstream recovery: simulated tasks with known rises, fitted with each downstream card.

Each world draws binomial scores (n_items as stated, realistic for benchmarks) from known
per-task midpoints, slopes, ceilings and chance levels, and is fitted with the card's
defaults. Gates, at the fixed seeds below:

* no divergences and R-hat < 1.01 (the diagnostics' own thresholds);
* of the per-task quantities (midpoint, slope, ceiling: 3 per task) all but a stated few are
  covered by their 95% intervals. For a calibrated posterior the count of misses is about
  Binomial(3T, 0.05): the gates below fail a correct sampler with probability ~1% (stated per
  test); tasks share the population, so the count is a little more variable than binomial;
* each task's emergence threshold (the compute at 10% of its headroom, known in closed form
  from the truth) lies in its 95% interval, with the same allowance.

For the loss-linked cards the law's exponent and irreducible loss must be covered too: the
accuracies and losses are fitted jointly, so a wrong law would show there.
"""

import warnings

import numpy as np
import pytest

import bayescale as bs
from bayescale.datasets import simulate_evaluations
from bayescale.links import get_link

pytestmark = pytest.mark.slow

#: Six tasks spanning the shapes a benchmark suite has: rising, saturating, emergent (steep),
#: barely started, and a two-option task (chance 0.5).
SIGMOID_TASKS = [
    dict(task="smooth", midpoint_flops=1e20, slope=1.2, chance=0.25, ceiling=0.9),
    dict(task="saturating", midpoint_flops=1e19, slope=2.0, chance=0.25, ceiling=0.95),
    dict(task="emergent", midpoint_flops=3e21, slope=6.0, chance=0.0, ceiling=0.8),
    dict(task="binary", midpoint_flops=5e20, slope=2.5, chance=0.5, ceiling=0.85),
    dict(task="late", midpoint_flops=2e22, slope=3.0, chance=0.25, ceiling=0.75),
    dict(task="steady", midpoint_flops=3e21, slope=0.8, chance=0.2, ceiling=0.9),
]
FAMILIES = {"x": -0.15, "y": 0.0, "z": 0.15}


def _misses(fit, tasks, predictor_name):
    """Truths of (midpoint, slope, ceiling, threshold) outside their 95% intervals."""
    summary = fit.summary().set_index("parameter")
    emergence = bs.emergence(fit, family=None if len(fit.families) == 1 else fit.families[0])
    thresholds = emergence[emergence["quantity"] == "threshold_flops"].set_index("task")
    misses = []
    for task in tasks:
        name = task["task"]
        truth = {f"{predictor_name}[{name}]": task[predictor_name], f"slope[{name}]": task["slope"], f"ceiling[{name}]": task["ceiling"]}
        misses += [key for key, value in truth.items() if not summary.loc[key, "q2.5"] <= value <= summary.loc[key, "q97.5"]]
        truth_threshold = task.get("threshold_flops")
        if truth_threshold is not None and not thresholds.loc[name, "q2.5"] <= truth_threshold <= thresholds.loc[name, "q97.5"]:
            misses.append(f"threshold[{name}]")
    return misses


def _fit(runs, card, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diagnostics are asserted below, not warned
        return bs.fit(runs, card, seed=0, progress=False, **options)


def test_sigmoid_recovers_tasks_families_and_thresholds():
    flops = np.logspace(19, 22.5, 8)
    runs = simulate_evaluations(SIGMOID_TASKS, flops, families=FAMILIES, n_items=1000, seed=11)
    fit = _fit(runs, "downstream-sigmoid")
    assert fit.diagnostics.divergences == 0
    assert fit.diagnostics.max_r_hat < 1.01
    link = get_link("sigmoid")
    tasks = []
    for task in SIGMOID_TASKS:
        # Threshold of family x (shift -0.15 decades): 10% of the headroom, in closed form.
        x = float(link.solve(0.1, np.log10(task["midpoint_flops"]), task["slope"])) - FAMILIES["x"]
        tasks.append({**task, "threshold_flops": 10.0**x})
    misses = _misses(fit, tasks, "midpoint_flops")
    # 24 checks: P[Binomial(24, 0.05) >= 4] = 3%; the gate allows 4 (P[>= 5] = 0.7%).
    assert len(misses) <= 4, misses
    summary = fit.summary().set_index("parameter")
    # Family shifts relative to their mean (here -0.15, 0, 0.15 decades).
    for family, shift in FAMILIES.items():
        row = summary.loc[f"family_offset[{family}]"]
        assert row["q2.5"] <= shift <= row["q97.5"], (family, row)


LAW = dict(E=1.8, A=40.0, alpha=0.07)


def _law_misses(fit):
    """The loss law's alpha and E, where their 95% intervals miss the truth."""
    posterior = fit.idata.posterior
    alpha = posterior["alpha"].values.reshape(-1)
    big_e = np.exp(posterior["e"].values.reshape(-1))
    return [
        name
        for name, draws, truth in (("alpha", alpha, LAW["alpha"]), ("E", big_e, LAW["E"]))
        if not np.quantile(draws, 0.025) <= truth <= np.quantile(draws, 0.975)
    ]


def test_loss_to_accuracy_recovers_tasks_and_the_law():
    tasks = [
        dict(task="a", midpoint_loss=2.6, slope=6.0, chance=0.25, ceiling=0.9),
        dict(task="b", midpoint_loss=3.0, slope=3.0, chance=0.5, ceiling=0.85),
        dict(task="c", midpoint_loss=2.4, slope=8.0, chance=0.0, ceiling=0.8),
    ]
    runs = simulate_evaluations(tasks, np.logspace(19, 23, 10), n_items=1000, loss_law=LAW, seed=0)
    # 2,000 draws a chain, not the default 1,000: at 1,000 (bulk ESS 470-830) the largest
    # split R-hat of seeds 0-5 scattered over 1.003-1.008, and seed 0 gave 1.012 on a machine
    # whose floating-point path differed, so the gate measured luck; at 2,000 seeds 0 and 3
    # gave 1.0014.
    fit = _fit(runs, "loss-to-accuracy", num_samples=2000)
    assert fit.diagnostics.divergences == 0
    assert fit.diagnostics.max_r_hat < 1.01
    misses = _misses(fit, tasks, "midpoint_loss")
    # 9 checks: P[Binomial(9, 0.05) >= 2] = 7%; the gate allows 2 (P[>= 3] = 0.8%).
    assert len(misses) <= 2, misses
    assert _law_misses(fit) == []


def test_exponential_recovers_tasks_and_the_law():
    # Gadre et al.'s form saturates only at 1: ceilings at 98% of the headroom, as the card assumes.
    tasks = [
        dict(task="a", midpoint_loss=2.9, slope=2.0, chance=0.25),
        dict(task="b", midpoint_loss=3.2, slope=1.5, chance=0.5),
        dict(task="c", midpoint_loss=2.7, slope=3.0, chance=0.0),
    ]
    tasks = [{**t, "ceiling": t["chance"] + 0.98 * (1.0 - t["chance"])} for t in tasks]
    runs = simulate_evaluations(tasks, np.logspace(19, 23, 10), n_items=1000, loss_law=LAW, link="exponential", seed=0)
    fit = _fit(runs, "downstream-exponential")
    assert fit.diagnostics.divergences == 0
    assert fit.diagnostics.max_r_hat < 1.01
    misses = _misses(fit, tasks, "midpoint_loss")
    assert len(misses) <= 2, misses  # as above
    assert _law_misses(fit) == []


def test_sigmoid_tasks_fitted_one_by_one_recover_their_rises():
    """fit_many with a downstream card: each of the six tasks alone (one family), 4 chains x
    (1000 + 2000). Coverage of all 18 (midpoint, slope, ceiling) truths with the allowance
    stated in the module docstring: at most 3 misses (P(>= 4 | Binomial(18, 0.05)) ~ 1.4%).

    Diagnostics are gated for the four tasks whose rise the data show (seeds 0 and 1: no
    divergences, R-hat <= 1.004). "late" (midpoint 2e22 at the data's edge) and "steady" (slope
    0.8, half its rise beyond the data) lean on their priors along a wall when fitted alone: 1
    divergent transition each at seed 0, R-hat up to 1.02 with 1,000 draws. Their diagnostics
    report that, and pooling (the test above) is the model for them.
    """
    flops = np.logspace(19, 22.5, 8)
    runs = simulate_evaluations(SIGMOID_TASKS, flops, n_items=1000, seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diagnostics are asserted below, not warned
        fits = bs.fit_many(runs, by="task", model="downstream-sigmoid", seed=0, batch_size=1, num_samples=2000, progress=False)
    misses = []
    for task in SIGMOID_TASKS:
        fitted = fits[task["task"]]
        assert not fitted.pooled
        if task["task"] not in ("late", "steady"):
            assert fitted.diagnostics.divergences == 0, task["task"]
            assert fitted.diagnostics.max_r_hat < 1.01, task["task"]
        misses += _misses(fitted, [task], "midpoint_flops")
    assert len(misses) <= 3, misses
