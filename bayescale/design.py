"""Which runs to train next: Bayesian experimental design per FLOP.

A candidate run is worth what it is expected to teach about the *target* (the log loss at a
large scale, or the log of the compute-optimal size at a budget) per FLOP it costs. The
measure is the expected information gain about the target (Lindley 1956), computed per
posterior draw in a local normal approximation and averaged over the draws: the Bayesian
design criterion of Chaloner & Larntz (1989, "Optimal Bayesian design applied to logistic
regression experiments"), which averages a local criterion over the posterior rather than
evaluating it at one point estimate.

What is known now is the posterior covariance ``Sigma`` of the law's parameters (from the
draws; for a pooled family it carries what the other families taught). At draw ``s`` a run
with log-loss gradient ``j_s`` and observation noise ``v_s`` (the inverse Fisher information
of one observation: sigma^2 for a normal likelihood, sigma^2 (nu + 3) / (nu + 1) for a
Student-t one) lowers the target's variance ``g_s' Sigma g_s`` by
``(g_s' Sigma j_s)^2 / (j_s' Sigma j_s + v_s)`` (a rank-one update), a gain of
``-log(1 - fall / variance) / 2`` nats; the gains are averaged over draws. Gradients are
taken by central differences. The local gradients carry the law's curvature across the
posterior; the shared covariance keeps the draws in the tails of a wide posterior from
dominating. (Each draw's own Fisher information of the fitted runs instead of ``Sigma``
chose batches whose widths were 0.86x the grid's rather than 0.75x, 5 simulated worlds.)

Batches are chosen greedily: each round adds the affordable candidate with the largest gain
per FLOP *given the runs already chosen* (each draw's covariance is conditioned on them), so a
second run that teaches what the first already did is worth little: no double counting.
Greedy by gain per FLOP and greedy by gain are both run and the better batch kept (Leskovec
et al. 2007). With ``max_repeats`` > 1 a candidate may be chosen again, as another seed of the
same configuration: the conditioning values a repeat for what it adds beyond the first. For a
single target, the locally optimal design has at most as many distinct configurations as the
law has parameters (Elfving 1952, "Optimum allocation in linear regression theory"), so a menu
used at most once each forces the batch onto configurations that teach less; repeats let it
concentrate (median 0.72x the grid's width rather than 0.87x over 32 simulated worlds,
``benchmarks/results/design.md``). The price is robustness: a seed averages out noise, not the
law's misfit at that configuration; with a 1% misfit per configuration repeats gave 0.79x
against 0.85x and covered the truth in 29 of 32 worlds against 32
(``benchmarks/results/design_misfit.md``), hence a default of one run per candidate.
The expected 95% width after a batch is the current width divided by
``exp(gain)`` (a nat of information divides a normal quantity's sd by e).

What was tried first, and why not: the Bayes-linear adjusted variance from the draws'
global covariance of target and candidates (Goldstein & Wooff 2007), and reweighting draws by
simulated outcomes (nested Monte Carlo, as in pyro.contrib.oed). Reweighting degenerated
for batches (1.6 effective draws of 3,744 after 18 choices); the global linear update
predicted widths 2x too wide and chose batches no better than the usual grid (median width
0.92x the grid's in ``benchmarks/run.py --workload design``). Figures for this method:
``benchmarks/results/design.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .data import DataError, RunTable
from .model import centred_inputs
from .predict import _complete_inputs, optimal_sizes, simulate_log_loss

#: Kinds of target :func:`suggest_runs` accepts, and what each is.
TARGETS = {
    "loss": "the expected loss at target params and tokens (or flops, for a compute law)",
    "optimal_params": "the compute-optimal parameter count at target flops (Chinchilla law)",
}


@dataclass(frozen=True)
class Design:
    """The result of :func:`suggest_runs`.

    Attributes
    ----------
    candidates
        Every candidate with ``cost`` (FLOP), ``expected_gain`` (expected information about the
        target, in nats, if this run alone were added), ``gain_per_flop``, ``runs`` (how many
        times it was chosen: more than once only with ``max_repeats`` > 1, each a run with its
        own seed), ``selected`` (``runs`` > 0) and ``order`` (when it was first chosen: 1 for
        the first run of the batch, ...; 0 if never).
    selected
        The runs to train, one row per run in the order chosen (a candidate chosen twice is
        two rows with its label), with its candidate columns, ``order`` and
        ``width_95_after``: the target's expected 95% interval width after the runs chosen up
        to and including this one.
    target
        What was targeted, in words.
    width_95_before
        The target's 95% interval width now (on the target's scale, e.g. nats of loss).
    width_95_after
        Its expected width after the whole batch.
    spent, budget_flops
        FLOP spent by the batch and the budget.
    """

    candidates: pd.DataFrame
    selected: pd.DataFrame
    target: str
    width_95_before: float
    width_95_after: float
    spent: float
    budget_flops: float


def _target_function(fit, target: dict) -> tuple[callable, str]:
    """The target as a function of the law's parameters (a dict of draws -> array), and a description."""
    kind = target.get("kind", "loss")
    if kind not in TARGETS:
        raise ValueError(f"target kind must be one of {sorted(TARGETS)}, got {kind!r}")
    spec, inputs = fit.spec, {k: target[k] for k in ("params", "tokens", "flops") if k in target}
    if kind == "loss":
        complete = _complete_inputs(spec, *(inputs.get(k) for k in ("params", "tokens", "flops")))
        if len(next(iter(complete.values()))) != 1:
            raise ValueError("a loss target is one scale: give single numbers for params/tokens/flops")
        x = centred_inputs(complete, fit.centre)
        where = ", ".join(f"{k}={v:.3g}" for k, v in inputs.items())
        return (lambda theta: simulate_log_loss(spec, theta, x, noise=False)[:, 0]), f"loss at {where}"
    if list(inputs) != ["flops"] or spec.law.optimal_fn is None:
        raise ValueError("an optimal_params target needs flops (the budget) and nothing else, and a law with params and tokens")
    budget = np.asarray([float(inputs["flops"])])

    def log_optimal_params(theta):
        return np.log(optimal_sizes(spec.law, theta, fit.centre, budget)[0][:, 0])

    return log_optimal_params, f"compute-optimal params at {budget[0]:.3g} FLOP"


def _jacobian(function, theta: dict, names) -> np.ndarray:
    """d function / d theta per draw by central differences: (S, ..., P). The functions here are
    the law and its optimum, smooth in every parameter; steps of 1e-5 leave ~1e-10 error."""
    columns = []
    for name in names:
        step = 1e-5 * np.maximum(1.0, np.abs(theta[name]))
        shape = (-1,) + (1,) * (np.ndim(function(theta)) - 1)
        up = function({**theta, name: theta[name] + step})
        down = function({**theta, name: theta[name] - step})
        columns.append((up - down) / (2.0 * step.reshape(shape)))
    return np.stack(columns, axis=-1)


def _candidate_table(candidates) -> pd.DataFrame:
    """Validated candidates with a ``cost`` column (FLOP)."""
    if not isinstance(candidates, pd.DataFrame):
        candidates = pd.DataFrame(candidates)
    if candidates.empty:
        raise DataError("no candidate runs given; pass a table with params and tokens columns")
    if "flops" not in candidates and not {"params", "tokens"} <= set(candidates):
        raise DataError(f"candidates need params and tokens columns (or flops, for a compute law); they have {list(candidates.columns)}, missing columns")
    cost = candidates["cost"] if "cost" in candidates else None
    # RunTable names bad rows; a "run" column keeps it from refusing repeated candidates (a
    # repeat is a legitimate choice: a second seed of the same configuration).
    checked = candidates.drop(columns=["cost"], errors="ignore").assign(run=np.arange(len(candidates)))
    table = RunTable(checked, source="the candidates").data.drop(columns="run").set_axis(candidates.index)  # the caller's row labels
    if cost is not None:
        cost = pd.to_numeric(cost, errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(cost) | (cost <= 0)
        if bad.any():
            raise DataError(f"candidate cost must be positive and finite; rows {', '.join(map(str, np.flatnonzero(bad)[:8]))} are not")
    table["cost"] = table["flops"].to_numpy(dtype=float) if cost is None else cost
    return table


class _LocalInformation:
    """Per posterior draw, the covariance of the law's parameters and the candidates' gradients.

    ``covariance`` (S, P, P): what is known now (the same for every draw until runs are
    chosen; :func:`_current_covariance`); ``jacobian`` (S, K, P):
    each candidate's log loss against the parameters; ``gradient`` (S, P): the target's;
    ``noise`` (S,): the variance a new run's observation adds (the inverse Fisher information
    of one observation: sigma^2 for a normal likelihood, sigma^2 (nu + 3) / (nu + 1) for a
    Student-t one).
    """

    def __init__(self, covariance, jacobian, gradient, noise):
        self.covariance, self.jacobian, self.gradient, self.noise = covariance, jacobian, gradient, noise

    def variances(self, covariance) -> np.ndarray:
        """The target's local variance at each draw, (S,)."""
        return np.einsum("sp,spq,sq->s", self.gradient, covariance, self.gradient)

    def _update(self, covariance):
        spread = np.einsum("spq,skq->skp", covariance, self.jacobian)  # Sigma j
        total = self.noise[:, None] + np.einsum("skp,skp->sk", self.jacobian, spread)  # j' Sigma j + noise
        return spread, total

    def gains(self, covariance) -> np.ndarray:
        """Expected information each candidate alone adds about the target, in nats:
        per draw, the variance falls by (g' Sigma j)^2 / (j' Sigma j + noise) (a rank-one
        update), a gain of -log(1 - fall / variance) / 2; averaged over draws."""
        spread, total = self._update(covariance)
        fall = np.einsum("sp,skp->sk", self.gradient, spread) ** 2 / total
        share = np.clip(fall / self.variances(covariance)[:, None], 0.0, 1.0 - 1e-12)
        return np.mean(-0.5 * np.log1p(-share), axis=0)

    def information(self, covariance) -> float:
        """Expected information about the target gained since ``self.covariance``, in nats."""
        return float(np.mean(0.5 * np.log(self.variances(self.covariance) / self.variances(covariance))))

    def condition(self, covariance, k: int):
        """``covariance`` after observing candidate ``k`` (Sherman-Morrison, per draw)."""
        spread, total = self._update(covariance)
        column = spread[:, k]
        return covariance - np.einsum("sp,sq->spq", column, column) / total[:, k, None, None]


def _current_covariance(theta: dict, names) -> np.ndarray:
    """(S, P, P): what is known now about the law's parameters: their posterior covariance,
    the same at every draw (module docstring: why not each draw's local Fisher information)."""
    covariance = np.cov(np.stack([np.asarray(theta[k]) for k in names]))
    return np.array(np.broadcast_to(covariance, (np.size(theta[names[0]]), len(names), len(names))))


def _greedy(information: _LocalInformation, cost, budget: float, per_flop: bool, max_repeats: int = 1) -> tuple[list[int], list[float]]:
    """Greedy batch under the budget: the chosen candidates in order (each at most
    ``max_repeats`` times), and the information about the target gained after each (given the
    runs chosen before it)."""
    covariance, chosen, gained, remaining = information.covariance, [], [], budget
    runs = np.zeros(cost.size, dtype=int)
    while True:
        value = information.gains(covariance) / (cost if per_flop else 1.0)
        value = np.where((runs < max_repeats) & (cost <= remaining), value, -np.inf)
        best = int(np.argmax(value))
        if not value[best] > 0:
            return chosen, gained  # nothing affordable is left, or expected to help
        covariance = information.condition(covariance, best)
        runs[best] += 1
        remaining -= cost[best]
        chosen.append(best)
        gained.append(information.information(covariance))


def suggest_runs(
    fit,
    candidates,
    budget_flops: float,
    target: dict,
    *,
    family: str | None = None,
    max_repeats: int = 1,
    num_draws: int = 1000,
    seed: int = 0,
) -> Design:
    """Choose the candidate runs that most narrow a target's prediction per FLOP.

    Parameters
    ----------
    fit
        A :class:`~bayescale.Fit` of a loss card (single-family or hierarchical).
    candidates
        Runs that could be trained: a DataFrame (or dict of columns) with ``params`` and
        ``tokens`` (or two of params, tokens, flops); optional ``cost`` (FLOP; default
        ``flops`` = 6 N D) and ``family`` (which must be the target's: runs are valued for
        what they teach about their own family).
    budget_flops
        Total compute the chosen runs may spend.
    target
        What to learn about: ``{"params": N, "tokens": D}`` (or ``{"flops": C}`` for a compute
        law): the expected loss there; ``{"kind": "optimal_params", "flops": C}``: the
        compute-optimal parameter count at budget C.
    family
        The family the target and the candidates are for (hierarchical fits; ``"new"`` for
        an unseen one, whose information is then the population's).
    max_repeats
        How many times one candidate may be chosen, each time a run of its own (another
        seed). Repeats let the batch concentrate on the few configurations that teach most
        (module docstring); they assume a run's deviation from the law is noise that another
        seed averages out, not the law's misfit at that configuration, which every seed
        shares. 1 (the default) spreads the batch over distinct configurations.
    num_draws
        Posterior draws the expected information is averaged over.
    seed
        Seed of the choice of draws, and of the population draws for a new family.

    Returns
    -------
    Design

    Raises
    ------
    bayescale.DataError
        If candidates are missing columns or have non-positive sizes (with row numbers), or the
        budget is smaller than the cheapest candidate.
    """
    if isinstance(max_repeats, bool) or not isinstance(max_repeats, (int, np.integer)) or max_repeats < 1:
        raise ValueError(f"max_repeats must be a whole number of runs, at least 1, got {max_repeats!r}")
    table = _candidate_table(candidates)
    if "family" in (candidates.columns if isinstance(candidates, pd.DataFrame) else candidates):
        others = sorted(set(table["family"]) - {family if family is not None else fit.families[0]})
        if others:
            raise DataError(f"candidates of families {others} are not the target's family; suggest_runs values runs of the family being predicted (family=...)")
    if not np.isfinite(budget_flops) or budget_flops <= 0:
        raise DataError(f"budget_flops must be positive and finite, got {budget_flops!r}")
    cheapest = float(table["cost"].min())
    if budget_flops < cheapest:
        raise DataError(f"the budget {budget_flops:.3g} FLOP is smaller than the cheapest candidate ({cheapest:.3g} FLOP); raise the budget or add smaller candidates")
    target_of, described = _target_function(fit, target)
    spec, names = fit.spec, fit.spec.law.parameters
    everything = fit.parameter_draws(family, seed=seed)
    width_before = float(np.diff(np.exp(np.quantile(target_of(everything), [0.025, 0.975])))[0])
    pick = np.random.default_rng(seed).permutation(np.size(everything[names[0]]))[:num_draws]
    theta = {k: np.asarray(v)[pick] for k, v in everything.items()}

    def log_loss_at(frame):
        x = centred_inputs(_complete_inputs(spec, *(frame[k].to_numpy(dtype=float) for k in ("params", "tokens", "flops"))), fit.centre)
        return lambda th: simulate_log_loss(spec, th, x, noise=False).reshape(len(pick), -1)

    sigma2 = theta["sigma"] ** 2
    noise = sigma2 * (theta["nu"] + 3.0) / (theta["nu"] + 1.0) if spec.likelihood == "student_t" else sigma2
    covariance = _current_covariance(theta, names)
    information = _LocalInformation(covariance, _jacobian(log_loss_at(table), theta, names), _jacobian(target_of, theta, names), noise)

    cost = table["cost"].to_numpy(dtype=float)
    table["expected_gain"] = information.gains(information.covariance)
    table["gain_per_flop"] = table["expected_gain"] / cost
    # Greedy by gain per FLOP can fill the budget with cheap runs that each teach a little;
    # greedy by gain alone can spend it on one expensive run. Run both, keep the better batch
    # (Leskovec et al. 2007, "Cost-effective outbreak detection", sec. 3: within a constant
    # factor of the best budgeted batch, which neither alone guarantees).
    batches = [_greedy(information, cost, float(budget_flops), per_flop, int(max_repeats)) for per_flop in (True, False)]
    chosen, gained = max(batches, key=lambda batch: batch[1][-1] if batch[1] else 0.0)
    # Each nat of information about a normal quantity divides its sd, and so its width, by e.
    widths = [width_before * np.exp(-nats) for nats in gained]
    chosen = np.asarray(chosen, dtype=int)
    candidate, first_choice = np.unique(chosen, return_index=True)
    table["runs"] = np.bincount(chosen, minlength=len(table))
    table["selected"], table["order"] = table["runs"] > 0, 0
    table.iloc[candidate, table.columns.get_loc("order")] = first_choice + 1
    selected = table.iloc[chosen].drop(columns=["runs", "selected"]).assign(order=np.arange(1, len(chosen) + 1), width_95_after=widths)
    width_after = widths[-1] if widths else width_before
    return Design(table, selected, described, width_before, width_after, float(cost[chosen].sum()), float(budget_flops))
