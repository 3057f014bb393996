"""Which runs to train next: Bayesian experimental design per FLOP.

A candidate run is worth what it is expected to teach about the *target* (the log loss at a
large scale, the log of the compute-optimal size at a budget, or the log compute at which a
downstream task emerges) per FLOP it costs. The measure is the expected information gain
about the target (Lindley 1956), in one of two ways.

**Loss targets: a local normal approximation per draw**, averaged over the draws: the
Bayesian design criterion of Chaloner & Larntz (1989, "Optimal Bayesian design applied to
logistic regression experiments"), which averages a local criterion over the posterior rather
than evaluating it at one point estimate. What is known now is the posterior covariance
``Sigma`` of the law's parameters (from the draws; for a pooled family it carries what the
other families taught). At draw ``s`` a run with log-loss gradient ``j_s`` and observation
noise ``v_s`` (the inverse Fisher information of one observation: sigma^2 for a normal
likelihood, sigma^2 (nu + 3) / (nu + 1) for a Student-t one) lowers the target's variance
``g_s' Sigma g_s`` by
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

**Emergence targets: simulated outcomes** (:class:`_SimulatedInformation`). A task that has
not yet risen in the fitted models leaves its threshold decades wide, and across that width
the rise is nowhere near linear in its parameters: the local valuation overvalued cheap small
models there, and its batches gave thresholds 1.17x as wide as training the next sizes up (3
simulated worlds). Instead, posterior draws play the truth in turn, the candidates' scores are
simulated from them, the other draws are reweighted by those scores, and the expected fall in
the threshold's variance is measured (nested Monte Carlo, Ryan 2003). Reweighting a thousand
draws is exact enough for the few large models such a batch holds; it degenerated for the long
batches of loss targets (below). Greedy choices on this valuation were a poor bet (a median
0.94x the width of the next sizes up, but 3.4x in one of 8 worlds, whose batch saw only the
onset of the rise), so the largest runs the budget affords compete as a batch of their own
and are kept where nothing is valued above them: median 0.92x, at most 1.05x, 8 worlds
(``benchmarks/results/emergence_design.md``). For loss targets that batch was never valued
above the greedy ones (32 worlds, both menus), so it changes nothing there.

What was tried first for loss targets, and why not: the Bayes-linear adjusted variance from
the draws' global covariance of target and candidates (Goldstein & Wooff 2007), and
reweighting draws by simulated outcomes (nested Monte Carlo, as in pyro.contrib.oed).
Reweighting degenerated for batches (1.6 effective draws of 3,744 after 18 choices); the global linear update
predicted widths 2x too wide and chose batches no better than the usual grid (median width
0.92x the grid's in ``benchmarks/run.py --workload design``). Figures for this method:
``benchmarks/results/design.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpyro.distributions as dist
import pandas as pd

from .data import DataError, RunTable
from .downstream import EDGE, DownstreamFit, beta_binomial_kernel
from .emergence import crossing, threshold_level
from .model import centred_inputs
from .predict import _complete_inputs, optimal_sizes, simulate_log_loss

#: Kinds of target :func:`suggest_runs` accepts, and what each is.
TARGETS = {
    "loss": "the expected loss at target params and tokens (or flops, for a compute law)",
    "optimal_params": "the compute-optimal parameter count at target flops (Chinchilla law)",
    "emergence": "the compute at which a task's accuracy passes its emergence threshold (downstream-sigmoid fits)",
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
        The target's 95% interval width now, on the target's scale: nats of loss, parameters,
        or decades of compute for an emergence threshold.
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
    if kind == "emergence":
        raise ValueError("an emergence target needs a fit of downstream-sigmoid (bayescale.fit(evals, 'downstream-sigmoid')); this is a loss fit")
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


def _some(draws: dict, num_draws: int, seed: int) -> dict:
    """``num_draws`` of the draws, chosen at random (all of them if there are fewer)."""
    pick = np.random.default_rng(seed).permutation(np.size(next(iter(draws.values()))))[:num_draws]
    return {k: np.asarray(v)[pick] for k, v in draws.items()}


def _loss_information(fit, table: pd.DataFrame, target: dict, family, num_draws: int, seed: int, max_repeats: int):
    """A loss card: a candidate observes its run's log loss, with the card's noise, valued in a
    local normal approximation (:class:`_LocalInformation`). Returns the information, the
    target's 95% width now and the target in words."""
    target_of, described = _target_function(fit, target)
    spec, names = fit.spec, fit.spec.law.parameters
    everything = fit.parameter_draws(family, seed=seed)
    width_before = float(np.diff(np.exp(np.quantile(target_of(everything), [0.025, 0.975])))[0])
    theta = _some(everything, num_draws, seed)
    x = centred_inputs(_complete_inputs(spec, *(table[k].to_numpy(dtype=float) for k in ("params", "tokens", "flops"))), fit.centre)
    sigma2 = theta["sigma"] ** 2
    noise = sigma2 * (theta["nu"] + 3.0) / (theta["nu"] + 1.0) if spec.likelihood == "student_t" else sigma2
    information = _LocalInformation(
        _current_covariance(theta, names),
        _jacobian(lambda th: simulate_log_loss(spec, th, x, noise=False).reshape(np.size(th["sigma"]), -1), theta, names),
        _jacobian(target_of, theta, names),
        np.broadcast_to(noise[:, None], (noise.size, len(table))),
    )
    return information, width_before, described


def _emergence_information(fit, table: pd.DataFrame, target: dict, family, num_draws: int, seed: int, max_repeats: int):
    """A downstream-sigmoid card: a candidate is a new model of the family at its compute,
    evaluated on the task (``n_items`` items: the candidates' column, or the task's in the
    data), valued by simulated outcomes (:class:`_SimulatedInformation`). The target is log10
    of the threshold compute, the quantity :func:`bayescale.emergence` reports. (A new model's
    scores on the other tasks also inform the family's shift; that is left out, so the value
    is a lower bound.) Returns the information, the target's 95% width now (decades) and the
    target in words."""
    kind = target.get("kind")
    if kind != "emergence":
        raise ValueError(f"a downstream fit takes an emergence target, {{'kind': 'emergence', 'task': ...}}; got kind {kind!r}")
    if fit.spec.predictor != "log_flops":
        raise ValueError("an emergence target needs a card whose predictor is compute (downstream-sigmoid); a loss-linked card's threshold also depends on the loss law, which suggest_runs does not value")
    task = target.get("task")
    if task not in fit.tasks:
        raise ValueError(f"an emergence target names a fitted task: {{'kind': 'emergence', 'task': ...}} with one of {', '.join(fit.tasks[:8])}; got {task!r}")
    delta, fraction = threshold_level(target.get("delta"), target.get("fraction"))
    draws = {**fit.task_draws(task), "shift": fit.family_offset(family, seed=seed), **fit.draws(["concentration"])}
    link, centre = fit.spec.link, fit.centre["log10_flops"]
    with np.errstate(invalid="ignore", divide="ignore"):
        threshold = crossing(link, draws, draws["shift"], delta=delta, fraction=fraction) + centre
    if not np.all(np.isfinite(threshold)):
        raise ValueError(
            f"task {task!r} never reaches chance + {delta} in {np.mean(~np.isfinite(threshold)):.0%} of the draws (its ceiling is below it); "
            "target a fraction of the headroom instead ({'fraction': 0.1})"
        )
    width_before = float(np.diff(np.quantile(threshold, [0.025, 0.975]))[0])
    theta = _some({**draws, "threshold": threshold}, num_draws, seed)
    x = np.log10(table["flops"].to_numpy(dtype=float)) - centre
    p = link.accuracy(x[None, :] + theta["shift"][:, None], theta["midpoint"][:, None], theta["slope"][:, None], theta["chance"][:, None], theta["ceiling"][:, None])
    p = np.clip(np.asarray(p), EDGE, 1.0 - EDGE).T  # (K, S)
    items = table["n_items"].to_numpy(dtype=float) if "n_items" in table else np.full(len(table), _task_items(fit, task) or np.nan)
    rng = np.random.default_rng([seed, 5])
    truth = rng.choice(p.shape[1], size=min(WORLDS, p.shape[1]), replace=False)
    phi = theta["concentration"]
    # Each world's outcomes as the model says they arise (bayescale.downstream: Beta-binomial or
    # binomial counts, or Beta accuracies without items), one per repeat: shape (R, K, M).
    counted, binomial = not np.isnan(items).any(), fit.spec.likelihood == "binomial"
    shape = (max_repeats, *p[:, truth].shape)
    rate = np.broadcast_to(p[:, truth], shape) if counted and binomial else rng.beta(p[:, truth] * phi[truth], (1.0 - p[:, truth]) * phi[truth], size=shape)
    a, b = (p * phi)[None, :, None, :], ((1.0 - p) * phi)[None, :, None, :]
    if not counted:
        log_likelihood = dist.Beta(a, b).log_prob(np.clip(rate, EDGE, 1.0 - EDGE)[..., None])
    else:
        n = items[None, :, None, None]
        correct = rng.binomial(n[..., 0].astype(np.int64), rate)[..., None]
        if binomial:
            log_likelihood = correct * np.log(p)[None, :, None, :] + (n - correct) * np.log1p(-p)[None, :, None, :]
        else:
            log_likelihood = beta_binomial_kernel(correct, n, a, b)
    definition = f"chance + {fraction:g} x headroom" if delta is None else f"chance + {delta:g}"
    described = f"log10 compute at which {task} passes {definition} ({fit.resolve_family(family)})"
    # Kept in float32 (R x K x 256 x num_draws: 1 MB per candidate and repeat at the defaults):
    # weights need differences of log-likelihoods to ~1e-3, not 1e-16.
    return _SimulatedInformation(theta["threshold"], np.asarray(log_likelihood, dtype=np.float32), truth), width_before, described


def _task_items(fit, task: str) -> float | None:
    """The task's items in the fitted data (its last evaluation's), or None without n_items."""
    observed = fit.observed()
    if "n_items" not in observed:
        return None
    return float(observed.loc[observed["task"] == task, "n_items"].iloc[-1])


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
    ``noise`` (S, K): the variance each candidate's observation adds (the inverse Fisher
    information of one observation: sigma^2 for a normal likelihood, sigma^2 (nu + 3) / (nu + 1)
    for a Student-t one).
    """

    def __init__(self, covariance, jacobian, gradient, noise):
        self.covariance, self.jacobian, self.gradient, self.noise = covariance, jacobian, gradient, noise

    @property
    def start(self) -> np.ndarray:
        """What is known before any run is chosen: ``covariance``."""
        return self.covariance

    def variances(self, covariance) -> np.ndarray:
        """The target's local variance at each draw, (S,)."""
        return np.einsum("sp,spq,sq->s", self.gradient, covariance, self.gradient)

    def _update(self, covariance):
        spread = np.einsum("spq,skq->skp", covariance, self.jacobian)  # Sigma j
        total = self.noise + np.einsum("skp,skp->sk", self.jacobian, spread)  # j' Sigma j + noise
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


#: Simulated worlds over which :class:`_SimulatedInformation` averages a candidate's value.
WORLDS = 256

#: Simulated gains below this (nats; the target's interval narrows by under 1%) count as none.
#: A model at 1e10 FLOP, at chance in every draw, teaches nothing about a task's rise, yet its
#: estimated gain was 1e-4 to 6e-4 nats (3 seeds, 1,000 draws: what reweighting leaves when
#: the over-dispersion tells draws apart), and at a trillionth of the cost such noise wins on
#: value per FLOP.
NOISE_FLOOR = 0.01


class _SimulatedInformation:
    """Expected information about the target from simulated outcomes and reweighted draws.

    Nested Monte Carlo (Ryan 2003, "Estimating expected information gains for experimental
    designs with application to the random fatigue-limit model"; pyro.contrib.oed): in world
    ``m`` one posterior draw ``truth[m]`` is the truth and the candidates' outcomes are drawn
    from it; every other draw is weighted by the likelihood of those outcomes, and the
    target's variance under the weights is what would be known after the runs. A candidate's
    gain is ``log(expected variance before / expected variance after) / 2`` nats, the
    expectations over worlds (the expected reduction of the target's posterior variance, put
    in nats). The world's own draw is left out of its weights: it fits its own outcomes best,
    and kept in, it made every candidate look informative.

    ``target`` (S,): the target per draw; ``log_likelihood`` (R, K, M, S): the log-likelihood
    at draw ``s`` of the ``r``-th run of candidate ``k`` in world ``m`` (each repeat an outcome
    of its own). Why not the local approximation for this target: from a posterior that
    spans decades, a task's rise is nowhere near linear in its parameters (module docstring).
    """

    def __init__(self, target: np.ndarray, log_likelihood: np.ndarray, truth: np.ndarray):
        self.target = target - np.mean(target)  # centred, so that variances lose no digits
        self.log_likelihood = log_likelihood
        log_weights = np.zeros((truth.size, target.size))
        log_weights[np.arange(truth.size), truth] = -np.inf
        self.start = (log_weights, np.zeros(log_likelihood.shape[1], dtype=int))

    def _weights(self, log_weights: np.ndarray) -> np.ndarray:
        weights = np.exp(log_weights - np.max(log_weights, axis=-1, keepdims=True))
        return weights / np.sum(weights, axis=-1, keepdims=True)

    def variances(self, log_weights: np.ndarray) -> np.ndarray:
        """The target's variance under each row of weights ``(..., S)`` -> ``(...)``, divided by
        ``1 - sum(w^2)``, the correction for a weighted sample's variance (as n - 1 for an
        unweighted one)."""
        weights = self._weights(log_weights)
        mean = weights @ self.target
        spread = 1.0 - np.sum(weights**2, axis=-1)
        biased = np.maximum(weights @ self.target**2 - mean**2, 0.0)
        return np.where(spread > 1e-9, biased / np.maximum(spread, 1e-9), 0.0)

    def gains(self, state) -> np.ndarray:
        """Expected information each candidate adds about the target given ``state``, in nats:
        ``log(V / (V - fall)) / 2``, with ``V`` the expected variance now and ``fall`` its
        expected fall.

        The fall is estimated as the expected squared move of the posterior mean, ``E (m' -
        m)^2`` (by the law of total variance, the same as the expected fall in variance, since
        the mean after is on average the mean now), less each world's importance-sampling
        noise in that move, ``sum_s (w'_s - w_s)^2 (T_s - m)^2``. The direct difference of the
        variances before and after was too noisy: where a task stays at chance the posterior
        moves to its wide upper tail, the variance rises, and the average of falls of both
        signs failed to rank the largest model above the cheap ones. Without the noise
        correction, models at chance, which teach nothing about the target, gained 0.003 nats
        each from noise alone; with it, up to 6e-4 remain, hence :data:`NOISE_FLOOR`.
        """
        log_weights, runs = state
        repeat = np.minimum(runs, self.log_likelihood.shape[0] - 1)  # exhausted ones are not chosen
        weights = self._weights(log_weights)  # (M, S)
        mean = weights @ self.target  # (M,)
        centred = (self.target[None, :] - mean[:, None]) ** 2
        falls = []
        for block in np.array_split(np.arange(runs.size), max(1, runs.size // 16)):  # bounded memory
            after = self._weights(log_weights[None] + self.log_likelihood[repeat[block], block])  # (k, M, S)
            move = after @ self.target - mean[None]  # (k, M)
            noise = np.sum((after - weights[None]) ** 2 * centred[None], axis=-1)
            falls.append(np.mean(move**2 - noise, axis=1))
        variance = np.mean(self.variances(log_weights))
        fall = np.clip(np.concatenate(falls), 0.0, (1.0 - 1e-12) * variance)
        gain = -0.5 * np.log1p(-fall / variance)
        return np.where(gain >= NOISE_FLOOR, gain, 0.0)

    def condition(self, state, k: int):
        """``state`` after a run of candidate ``k``: its outcome's likelihood joins the weights."""
        log_weights, runs = state
        runs = runs.copy()
        runs[k] += 1
        return log_weights + self.log_likelihood[runs[k] - 1, k], runs

    def widths(self, log_weights: np.ndarray) -> np.ndarray:
        """The target's weighted 95% interval width in each world, ``(M, S)`` -> ``(M,)``."""
        order = np.argsort(self.target)
        weights = self._weights(log_weights)[:, order]
        cumulative = np.cumsum(weights, axis=-1)
        low, high = (np.argmax(cumulative >= q, axis=-1) for q in (0.025, 0.975))
        return self.target[order][high] - self.target[order][low]

    def information(self, state) -> float:
        """Expected information about the target gained since ``start``, in nats: the log of the
        expected 95% width at the start over that after (for a normal target, the same as half
        the log of the variance ratio; unlike it, not reliant on normality), so that
        :func:`suggest_runs` reports the expected width after a batch as it would be measured."""
        return float(np.log(np.mean(self.widths(self.start[0])) / np.mean(self.widths(state[0]))))


def _affordable(cost, remaining: float, budget: float):
    """Whether each cost fits in what is left of the budget. A budget that is the sum of some
    runs' costs must afford those runs: subtracting them one by one rounds differently from
    adding them (in the 16th digit), so a millionth of a millionth of the budget is let pass."""
    return cost <= remaining + 1e-12 * budget


def _greedy(information, cost, budget: float, per_flop: bool, max_repeats: int = 1) -> tuple[list[int], list[float]]:
    """Greedy batch under the budget: the chosen candidates in order (each at most
    ``max_repeats`` times), and the information about the target gained after each (given the
    runs chosen before it). ``information`` is a :class:`_LocalInformation` or a
    :class:`_SimulatedInformation`: what is known now (``start``), each candidate's gain given
    what is known, and what is known after a run."""
    state, chosen, gained, remaining = information.start, [], [], budget
    runs = np.zeros(cost.size, dtype=int)
    while True:
        value = information.gains(state) / (cost if per_flop else 1.0)
        value = np.where((runs < max_repeats) & _affordable(cost, remaining, budget), value, -np.inf)
        best = int(np.argmax(value))
        if not value[best] > 0:
            return chosen, gained  # nothing affordable is left, or expected to help
        state = information.condition(state, best)
        runs[best] += 1
        remaining -= cost[best]
        chosen.append(best)
        gained.append(information.information(state))


def _in_order(information, order, cost, budget: float) -> tuple[list[int], list[float]]:
    """The candidates in ``order``, each once, skipping those the rest of the budget cannot
    pay for; returned as :func:`_greedy` returns its batch."""
    state, chosen, gained, remaining = information.start, [], [], budget
    for k in order:
        if _affordable(cost[k], remaining, budget):
            state = information.condition(state, int(k))
            remaining -= cost[k]
            chosen.append(int(k))
            gained.append(information.information(state))
    return chosen, gained


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
        A :class:`~bayescale.Fit` of a loss card (single-family or hierarchical), or a
        :class:`~bayescale.DownstreamFit` of ``downstream-sigmoid`` for an emergence target.
    candidates
        Runs that could be trained: a DataFrame (or dict of columns) with ``params`` and
        ``tokens`` (or two of params, tokens, flops); optional ``cost`` (FLOP; default
        ``flops`` = 6 N D) and ``family`` (which must be the target's: runs are valued for
        what they teach about their own family). For an emergence target a candidate is a
        model evaluated on the task, and ``flops`` alone will do; optional ``n_items`` (default:
        the task's in the fitted data).
    budget_flops
        Total compute the chosen runs may spend.
    target
        What to learn about: ``{"params": N, "tokens": D}`` (or ``{"flops": C}`` for a compute
        law): the expected loss there; ``{"kind": "optimal_params", "flops": C}``: the
        compute-optimal parameter count at budget C; ``{"kind": "emergence", "task": T}``
        (optional ``"fraction"`` of the headroom or ``"delta"`` above chance, as in
        :func:`bayescale.emergence`): the compute at which task T emerges.
    family
        The family the target and the candidates are for (hierarchical and multi-family
        downstream fits; ``"new"`` for an unseen one, whose information is then the
        population's).
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
    ValueError
        If the target does not suit the fit (a loss or optimal-size target needs a loss fit, an
        emergence target a fitted task of a downstream-sigmoid fit), or ``max_repeats`` is not
        a count of at least 1.
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
    valuation = _emergence_information if isinstance(fit, DownstreamFit) else _loss_information
    information, width_before, described = valuation(fit, table, target, family, num_draws, seed, int(max_repeats))

    cost = table["cost"].to_numpy(dtype=float)
    table["expected_gain"] = information.gains(information.start)
    table["gain_per_flop"] = table["expected_gain"] / cost
    # Greedy by gain per FLOP can fill the budget with cheap runs that each teach a little;
    # greedy by gain alone can spend it on one expensive run. Run both, keep the better batch
    # (Leskovec et al. 2007, "Cost-effective outbreak detection", sec. 3: within a constant
    # factor of the best budgeted batch, which neither alone guarantees). The usual plan,
    # the largest runs the budget affords, competes too: a batch is suggested only where its
    # expected information beats it (module docstring: emergence targets).
    batches = [_greedy(information, cost, float(budget_flops), per_flop, int(max_repeats)) for per_flop in (True, False)]
    batches.append(_in_order(information, np.argsort(-cost, kind="stable"), cost, float(budget_flops)))
    chosen, gained = max(batches, key=lambda batch: batch[1][-1] if batch[1] else 0.0)
    # Each nat of information about a normal quantity divides its sd, and so its width, by e.
    widths = [width_before * np.exp(-nats) for nats in gained]
    chosen = np.asarray(chosen, dtype=int)
    candidate, first_choice = np.unique(chosen, return_index=True)
    order = np.zeros(len(table), dtype=int)
    order[candidate] = first_choice + 1
    table["runs"] = np.bincount(chosen, minlength=len(table))
    table["selected"], table["order"] = table["runs"] > 0, order
    selected = table.iloc[chosen].drop(columns=["runs", "selected"]).assign(order=np.arange(1, len(chosen) + 1), width_95_after=widths)
    width_after = widths[-1] if widths else width_before
    return Design(table, selected, described, width_before, width_after, float(cost[chosen].sum()), float(budget_flops))
