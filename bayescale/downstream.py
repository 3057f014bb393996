"""Downstream accuracy: cards, data, model, fit and posterior predictive accuracy.

Model (a card with ``kind = "downstream"``; DESIGN.md section 4)::

    mu_j        ~ the card's priors               (the typical task: midpoint, log_slope, ceiling_logit)
    tau_j       ~ Gamma(4, 4 / scale_j)           (spread of coordinate j across tasks)
    w[t, j]     ~ Normal(mu_j, tau_j)             (partly centred per task, as families are in
                                                   bayescale.hierarchy: a task whose accuracy has
                                                   risen is pinned tightly, one that has not, loosely)
    u           = B c,  c ~ Normal(0, tau_family)  (each family's shift along the predictor, relative to the
                                                   fitted families' mean; B spans the sum-zero vectors)
    ceiling[t]  = chance[t] + (1 - chance[t]) sigmoid(ceiling_logit[t])
    p[i]        = link(x[i] + u[family[i]]; midpoint[task[i]], exp(log_slope[task[i]]), chance, ceiling)
    correct[i]  ~ BetaBinomial(n_items[i], p[i] phi, (1 - p[i]) phi)     (or Binomial)

The predictor ``x`` is ``log10(flops)`` minus its mean over the fitted rows (decades of
compute from the data's centre), or, for ``predictor = "loss"``, minus the loss that a
loss card (``loss_model``), fitted jointly to the rows' ``loss`` values, gives at the row's
compute, less its mean: loss uncertainty then flows into accuracy (DESIGN.md section 4).

Why these choices:

* **Counts, not fractions.** Binomial noise on ``correct`` out of ``n_items`` knows that
  1,000 items pin an accuracy to +-1.5% and 100 items to +-5%; a model on the accuracy
  alone has to learn one noise level for all tasks. The Beta-binomial adds over-dispersion
  (``phi``): checkpoints of one run and one item set share item difficulty, so accuracies
  scatter more than binomially. Without ``n_items`` the fit falls back to a Beta
  likelihood on the accuracy with the same ``phi`` and says why that is worse.
* **Gamma(4) spreads**, as for families in :mod:`bayescale.hierarchy` (where a half-normal let
  weakly identified spreads collapse into a funnel): tasks never share a slope exactly.
* **The ceiling is a parameter**, not 1: many benchmarks saturate below 100% (label noise,
  ambiguous items), and fixing it at 1 would bend the slope to fit the top.
* **A task's midpoint is sampled as its onset** ``slope * (midpoint - anchor)`` (the anchor is
  the data's largest predictor value): a task that has not risen yet only bounds it, which
  is a flat wall in that coordinate and a hyperbola in (midpoint, slope)
  (:func:`_task_coordinates`). Measured on Pythia's 8 tasks: 2-7 divergences and ~110
  leapfrog steps per draw before, none and ~55 after.
* **Family shifts are contrasts** (relative to the fitted families' mean): a shift common to
  all families is indistinguishable from moving every task, and sampling it made a funnel
  (Pythia, 2 families: 5-21 divergences). A new family's shift is drawn with spread
  ``tau_family * sqrt(1 + 1/F)`` around that mean.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd

from . import __version__
from ._arviz import az
from .data import DataError, RunTable, category_codes
from .diagnostics import Diagnostics, diagnose
from .engine import Settings, enable_compilation_cache, sampler_for, say
from .hierarchy import NEW_FAMILY, choose_centring
from .links import Link, get_link
from .model import make_model
from .posterior import Posterior
from .priors import Prior
from .spec import ModelSpec, card_target_accept, parse_toml

#: The per-task coordinates, in order: where the rise is centred, its log steepness, its ceiling.
TASK_COORDINATES = ("midpoint", "log_slope", "ceiling_logit")
#: Predictors a downstream card may use.
PREDICTORS = ("log_flops", "loss")
#: Likelihoods a downstream card may choose for ``correct`` out of ``n_items``.
COUNT_LIKELIHOODS = ("binomial", "beta_binomial")
#: Shape of the Gamma prior on every spread (see bayescale.hierarchy, "A spread near zero").
SPREAD_SHAPE = 4.0
#: Accuracy kept inside (0, 1) by this much, so that a Binomial log-likelihood stays finite.
EDGE = 1e-6


@dataclass(frozen=True)
class Spread:
    """A card's spread across tasks (or families): ``tau ~ Gamma(4, 4 / scale)``, mean ``scale``."""

    scale: float
    why: str = ""

    @classmethod
    def from_dict(cls, entry: Mapping, where: str) -> "Spread":
        """Parse ``{scale = 0.5, why = "..."}``."""
        entry = dict(entry)
        scale, why = entry.pop("scale", None), entry.pop("why", "")
        if entry or not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0):
            raise ValueError(f"{where}: a spread is {{scale = <positive number>, why = \"...\"}}")
        return cls(float(scale), why)

    def to_numpyro(self) -> dist.Distribution:
        """The Gamma(4, 4 / scale) prior."""
        return dist.Gamma(SPREAD_SHAPE, SPREAD_SHAPE / self.scale)


@dataclass(frozen=True)
class DownstreamSpec:
    """A parsed downstream model card (``kind = "downstream"``).

    Attributes
    ----------
    name, description, text
        The card's name, its description and its TOML source (stored with every fit).
    link
        The accuracy link (:mod:`bayescale.links`).
    predictor
        ``"log_flops"`` (decades of training compute) or ``"loss"`` (minus the loss).
    loss_model
        For ``predictor = "loss"``: the loss card fitted jointly (a compute law).
    chance
        Accuracy of guessing for tasks whose rows have no ``chance`` column.
    priors
        Priors of the typical task's ``midpoint``, ``log_slope`` and ``ceiling_logit``, and of
        the over-dispersion ``concentration``.
    task_spread
        Spread of each task coordinate across tasks.
    family_spread
        Spread of the families' shifts along the predictor.
    likelihood
        ``"binomial"`` or ``"beta_binomial"``.
    target_accept
        NUTS target acceptance (card entry ``[sampler] target_accept``; 0.8 when absent).
    """

    name: str
    link: Link
    predictor: str
    loss_model: object | None
    chance: float
    priors: Mapping[str, Prior]
    task_spread: Mapping[str, Spread]
    family_spread: Spread
    likelihood: str
    text: str
    description: str = ""
    target_accept: float = 0.8

    #: Downstream cards are told apart from loss cards by this (loss cards have no ``kind``).
    kind = "downstream"

    @property
    def sampled_parameters(self) -> tuple[str, ...]:
        """Sampled sites checked by the diagnostics (``family_contrast`` and ``tau_family`` only
        appear in fits of several families; :func:`fit_downstream` drops absent names)."""
        loss = tuple(self.loss_model.sampled_parameters) if self.loss_model is not None else ()
        return ("mu", "tau", "task_raw", "tau_family", "family_contrast", "concentration", *loss)

    def lone_task_prior(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and spread of each task coordinate for a task fitted on its own.

        A task fitted alone (:func:`bayescale.fit_many` by task) has no other tasks to learn the
        population from, so its prior is the population's prediction for a new task,
        ``w ~ Normal(mu, tau)`` with ``mu`` and ``tau`` drawn from the card's priors. That scale
        mixture is replaced by the normal with the same mean and variance: ``loc`` and
        ``sqrt(scale^2 + E[tau^2])``, where ``E[tau^2] = spread^2 (1 + 1/4)`` under
        ``Gamma(4, 4 / spread)``.

        Returns
        -------
        (mean, spread)
            Arrays of shape ``(3,)`` in the order of :data:`TASK_COORDINATES`.

        Raises
        ------
        ValueError
            If a task coordinate's prior is not Normal (the moment match is stated for Normal priors).
        """
        means, spreads = [], []
        for name in TASK_COORDINATES:
            prior = self.priors[name]
            if prior.distribution != "Normal":
                raise ValueError(
                    f"card {self.name!r}: fitting tasks one at a time needs a Normal prior on {name!r} (got "
                    f"{prior.distribution}); give it one, or pool the tasks with bayescale.fit"
                )
            spread = self.task_spread[name].scale
            means.append(prior.arguments["loc"])
            spreads.append(np.sqrt(prior.arguments["scale"] ** 2 + spread**2 * (1.0 + 1.0 / SPREAD_SHAPE)))
        return np.asarray(means, dtype=float), np.asarray(spreads, dtype=float)

    @classmethod
    def from_toml(cls, text: str, where: str = "model card") -> "DownstreamSpec":
        """Parse and check a downstream card's TOML text."""
        card = parse_toml(text, where)
        for key in ("name", "link", "predictor", "chance", "priors", "task_spread", "family_spread", "likelihood"):
            if key not in card:
                raise ValueError(f"{where} has no {key!r} entry; see models/downstream-sigmoid.toml for a complete card")
        link = get_link(card["link"])
        predictor = card["predictor"]
        if predictor not in PREDICTORS:
            raise ValueError(f"{where}: predictor must be one of {PREDICTORS}, got {predictor!r}")
        loss_model = None
        if predictor == "loss":
            if "loss_model" not in card:
                raise ValueError(f"{where}: predictor = \"loss\" needs loss_model = \"<a loss card>\", fitted jointly")
            loss_model = ModelSpec.load(card["loss_model"])
            if loss_model.hierarchical or tuple(loss_model.law.inputs) != ("flops",):
                raise ValueError(
                    f"{where}: loss_model must be a single-family card of a law of compute alone (e.g. "
                    f"compute-power-law), so that a threshold loss maps to one compute; got {loss_model.name!r}"
                )
        chance = dict(card["chance"])
        default_chance = chance.get("default")
        if not (isinstance(default_chance, (int, float)) and 0 <= default_chance < 1):
            raise ValueError(f"{where}: chance.default must be a number in [0, 1) (the accuracy of guessing)")
        likelihood = dict(card["likelihood"])
        kind = likelihood.pop("kind", None)
        if kind not in COUNT_LIKELIHOODS:
            raise ValueError(f"{where}: likelihood.kind must be one of {COUNT_LIKELIHOODS}, got {kind!r}")
        entries = {**card["priors"], **likelihood}
        needed = {*TASK_COORDINATES, "concentration"}
        if set(entries) != needed:
            raise ValueError(f"{where}: a downstream card needs priors for exactly {sorted(needed)}; got {sorted(entries)}")
        priors = {name: Prior.from_dict(entries[name], f"{where}, prior {name!r}") for name in sorted(needed)}
        if set(card["task_spread"]) != set(TASK_COORDINATES):
            raise ValueError(f"{where}: [task_spread] needs one entry for each of {TASK_COORDINATES}")
        task_spread = {name: Spread.from_dict(card["task_spread"][name], f"{where}, task_spread {name!r}") for name in TASK_COORDINATES}
        family_spread = Spread.from_dict(card["family_spread"], f"{where}, family_spread")
        return cls(
            card["name"], link, predictor, loss_model, float(default_chance), priors, task_spread, family_spread,
            kind, text, card.get("description", ""), card_target_accept(card, where),
        )


# --- data -------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluations:
    """Downstream rows made ready for the model: the inputs of :func:`make_downstream_model`.

    Attributes
    ----------
    frame
        The rows with ``task``, ``family``, ``flops``, ``accuracy``, ``chance`` (and
        ``correct``, ``n_items`` when counted; ``loss`` for loss-linked cards).
    tasks, families
        Names, in order of first appearance; rows index them by ``task_index``/``family_index``.
    counted
        Whether ``n_items`` is known (Beta-binomial/Binomial) or not (Beta on the accuracy).
    chance
        Chance accuracy of each task.
    """

    frame: pd.DataFrame
    tasks: list
    families: list
    counted: bool
    chance: np.ndarray


def evaluations(runs: RunTable, spec: DownstreamSpec) -> Evaluations:
    """Check that ``runs`` can be fitted by a downstream card and arrange them.

    Raises
    ------
    bayescale.DataError
        If the task, accuracy or compute columns are missing, a task has a single model
        size (which cannot identify its rise), ``chance`` varies within a task or leaves no
        headroom, or a loss-linked card's rows have no ``loss``.
    """
    data = runs.data
    if "task" not in data:
        raise DataError(f"{runs.source} has no 'task' column; downstream cards need one row per (model, task) with the task's name")
    if "correct" not in data and "accuracy" not in data:
        raise DataError(f"{runs.source} has neither 'correct' (with 'n_items') nor 'accuracy'; give the task scores in one of them")
    if "correct" in data and "n_items" not in data:
        raise DataError(f"{runs.source} has 'correct' but no 'n_items'; give the number of items each score is out of")
    if "flops" not in data:
        raise DataError(f"{runs.source} has no 'flops' column (nor 'params' and 'tokens' to derive it as 6 N D); downstream cards read compute")
    if spec.predictor == "loss" and "loss" not in data:
        raise DataError(f"card {spec.name!r} links accuracy to loss, so every row needs the evaluated model's 'loss'")
    data["task"] = data["task"].astype(str)
    if "chance" not in data:
        data["chance"] = spec.chance
    for task, part in data.groupby("task", sort=False):
        if part["chance"].nunique() > 1:
            raise DataError(f"task {task!r} has several 'chance' values ({sorted(part['chance'].unique())[:4]}); give each task one chance accuracy")
        if part["chance"].iloc[0] >= 1:
            raise DataError(
                f"task {task!r} has chance accuracy {part['chance'].iloc[0]:g}, at or above the ceiling of 1, "
                "which leaves no headroom to rise into; give chance as a fraction below 1 (e.g. 0.25 for four options)"
            )
        if part["flops"].nunique() < 2:
            raise DataError(
                f"task {task!r} has evaluations at a single compute ({part['flops'].iloc[0]:.3g} FLOP, one model), which "
                "cannot identify how its accuracy rises; add evaluations of two or more model sizes (three or more "
                "spread over a decade is better) or drop the task"
            )
    counted = "n_items" in data
    if counted and "correct" not in data:
        data["correct"] = np.round(data["accuracy"] * data["n_items"])
    if counted:
        data["accuracy"] = data["correct"] / data["n_items"]
    else:
        warnings.warn(
            f"{runs.source} has accuracies without 'n_items', so the fit uses a Beta likelihood on the "
            "accuracy whose spread is learned from the scatter: it cannot tell a 100-item task (+-5% noise) "
            "from a 5,000-item one (+-0.7%). Add an 'n_items' column for binomial noise.",
            UserWarning,
            stacklevel=3,
        )
    tasks = list(pd.unique(data["task"]))
    chance = data.groupby("task", sort=False)["chance"].first().reindex(tasks).to_numpy(dtype=float)
    return Evaluations(data, tasks, list(pd.unique(data["family"])), counted, chance)


def model_inputs(evals: Evaluations, spec: DownstreamSpec, centre: Mapping[str, float]) -> dict:
    """Arrays the model reads (see :func:`make_downstream_model`), as NumPy arrays (JAX takes
    them as they are; making each a JAX array here cost a millisecond a task in ``fit_many``)."""
    frame = evals.frame
    inputs = {
        "x": np.log10(frame["flops"].to_numpy(dtype=float)) - centre["log10_flops"],
        "task": category_codes(frame["task"], evals.tasks),
        "family": category_codes(frame["family"], evals.families),
        "chance": np.asarray(evals.chance, dtype=float),
        "accuracy": frame["accuracy"].to_numpy(dtype=float),
    }
    if evals.counted:
        inputs["correct"] = frame["correct"].to_numpy(dtype=float)
        inputs["n_items"] = frame["n_items"].to_numpy(dtype=float)
    # Sampling coordinates (see _task_coordinates): every task non-centred until choose_centring.
    inputs["centring"] = np.zeros((len(evals.tasks), len(TASK_COORDINATES)))
    inputs["onset"] = np.asarray(True)
    inputs["anchor"] = np.asarray(centre["anchor"], dtype=float)
    if spec.predictor == "loss":
        inputs["centre_loss"] = np.asarray(centre["loss"], dtype=float)
        losses = _loss_observations(frame)
        inputs["loss_x"] = {"flops": np.log(losses["flops"].to_numpy(dtype=float)) - centre["flops"]}
        inputs["log_loss"] = np.log(losses["loss"].to_numpy(dtype=float))
        inputs["row_loss_x"] = {"flops": np.log(frame["flops"].to_numpy(dtype=float)) - centre["flops"]}
    return inputs


def _loss_observations(frame: pd.DataFrame) -> pd.DataFrame:
    """One loss per evaluated model (rows of several tasks repeat it)."""
    return frame.drop_duplicates(subset=["family", "flops", "loss"])[["family", "flops", "loss"]]


def centre_of_evaluations(evals: Evaluations, spec: DownstreamSpec) -> dict[str, float]:
    """Centring values: mean log10 compute of the rows (and, for loss cards, mean log compute and
    loss), and the ``anchor`` of the tasks' onsets (the largest centred predictor value)."""
    flops = evals.frame["flops"].to_numpy(dtype=float)
    centre = {"log10_flops": float(np.mean(np.log10(flops)))}
    # The anchor of the tasks' onsets: the largest predictor value in the data.
    centre["anchor"] = float(np.log10(flops.max()) - centre["log10_flops"])
    if spec.predictor == "loss":
        losses = _loss_observations(evals.frame)
        centre["flops"] = float(np.mean(np.log(losses["flops"].to_numpy())))
        centre["loss"] = float(np.mean(losses["loss"].to_numpy()))
        centre["anchor"] = float(centre["loss"] - losses["loss"].min())
    return centre


# --- model --------------------------------------------------------------------


def _task_coordinates(inputs, mu, tau, num_tasks: int):
    """Every task's (midpoint, log_slope, ceiling_logit), with the task prior added as factors.

    ``task_raw`` (T, 3) has a flat base measure; its columns are read as follows.

    * log_slope and ceiling_logit: partly centred, ``raw ~ N(lambda mu, tau^lambda)`` with
      ``lambda = inputs["centring"]`` (chosen before sampling, as for families in
      :mod:`bayescale.hierarchy`).
    * midpoint: when sampling (``inputs["onset"] = 1``), the *onset* ``o = slope * (midpoint -
      anchor)``, the log-odds distance of the rise from the data's largest predictor value.
      A task that has not risen within the data only tells that ``log(headroom) - o`` is small
      enough: a flat wall in (o, ceiling), where in (midpoint, slope) it is the hyperbola
      ``slope * (midpoint - anchor) = const``, along which NUTS diverged (Pythia: 2-54
      divergences per fit). The prior ``midpoint ~ N(mu, tau)`` carries over with the Jacobian
      ``|d midpoint / d o| = 1 / slope``. For the optimiser that starts each chain
      (``onset = 0``) it is a non-centred offset, ``midpoint = mu + tau z``, where a mode exists.
    """
    lam = inputs["centring"][:, 1:]
    mean, spread = mu[None, 1:], tau[None, 1:]
    raw = numpyro.sample("task_raw", dist.ImproperUniform(dist.constraints.real, (), (num_tasks, len(TASK_COORDINATES))))
    numpyro.factor("task_prior", dist.Normal(lam * mean, spread**lam).log_prob(raw[:, 1:]).sum())
    rest = mean + spread ** (1.0 - lam) * (raw[:, 1:] - lam * mean)
    slope = jnp.exp(rest[:, 0])
    from_onset = inputs["anchor"] + raw[:, 0] / slope
    onset = inputs["onset"]
    midpoint = jnp.where(onset, from_onset, mu[0] + tau[0] * raw[:, 0])
    prior = jnp.where(onset, dist.Normal(mu[0], tau[0]).log_prob(from_onset) - jnp.log(slope), dist.Normal(0.0, 1.0).log_prob(raw[:, 0]))
    numpyro.factor("midpoint_prior", prior.sum())
    return jnp.concatenate([midpoint[:, None], rest], axis=1)


def make_downstream_model(spec: DownstreamSpec, num_tasks: int, num_families: int, *, pooled: bool = True):
    """Build the numpyro model of a downstream card (module docstring).

    Parameters
    ----------
    spec
        The card.
    num_tasks, num_families
        Tasks and families in the data.
    pooled
        Learn the population of tasks (``mu``, ``tau``); ``False`` fits one task on its own,
        with the card's prediction for a new task as its prior (:meth:`DownstreamSpec.lone_task_prior`).

    Returns
    -------
    callable
        ``model(inputs, observed=True)``, with ``inputs`` from :func:`model_inputs`; with
        ``observed=False`` the scores are simulated instead of conditioned on.
    """
    priors = {name: prior.to_numpyro() for name, prior in spec.priors.items()}
    loss_model = make_model(spec.loss_model) if spec.loss_model is not None else None
    lone = None if pooled else tuple(jnp.asarray(v) for v in spec.lone_task_prior())

    def model(inputs, observed=True):
        if lone is None:
            mu = jnp.stack([numpyro.sample(f"mu_{name}", priors[name]) for name in TASK_COORDINATES])
            numpyro.deterministic("mu", mu)
            tau = jnp.stack([numpyro.sample(f"tau_{name}", spread.to_numpyro()) for name, spread in spec.task_spread.items()])
            numpyro.deterministic("tau", tau)
        else:
            mu, tau = lone
        w = _task_coordinates(inputs, mu, tau, num_tasks)
        x = inputs["x"]
        if spec.predictor == "loss":
            theta = loss_model(inputs["loss_x"], inputs["log_loss"] if observed else None)
            loss = jnp.exp(spec.loss_model.law.log_loss(theta, inputs["row_loss_x"]))
            x = -(loss - inputs["centre_loss"])
        if num_families > 1:
            # Shifts relative to the fitted families' mean, in an orthonormal basis of the
            # sum-zero contrasts: a shift common to every family is the same as moving every
            # midpoint, so the likelihood cannot see it, and sampling it put a funnel between
            # tau_family and the families' common shift (Pythia, 2 families: 5-21 divergences).
            # Centred, because the families' differences are pinned by many evaluations each.
            tau_family = numpyro.sample("tau_family", spec.family_spread.to_numpyro())
            contrast = numpyro.sample("family_contrast", dist.Normal(0.0, tau_family).expand([num_families - 1]).to_event(1))
            offset = numpyro.deterministic("family_offset", jnp.asarray(sum_zero_basis(num_families)) @ contrast)
            x = x + offset[inputs["family"]]
        chance = inputs["chance"]
        ceiling = chance + (1.0 - chance) * jax.nn.sigmoid(w[:, 2])
        # A lone task (fit_many) takes a static slice, broadcast over rows, where several
        # tasks need a gather per evaluation: 10% of a lone task's log density's cost.
        t = inputs["task"] if num_tasks > 1 else slice(0, 1)
        p = spec.link.accuracy(x, w[t, 0], jnp.exp(w[t, 1]), chance[t], ceiling[t])
        p = numpyro.deterministic("p", jnp.clip(p, EDGE, 1.0 - EDGE))
        phi = numpyro.sample("concentration", priors["concentration"])
        # ``mask`` leaves out the padding rows of a task batched with larger ones (bayescale.parallel).
        with numpyro.plate("eval", p.shape[0]), numpyro.handlers.mask(mask=inputs.get("mask", True)):
            if "n_items" in inputs:
                if spec.likelihood == "binomial":
                    numpyro.sample("correct", dist.Binomial(inputs["n_items"], probs=p), obs=inputs["correct"] if observed else None)
                elif observed:
                    numpyro.factor("correct", beta_binomial_kernel(inputs["correct"], inputs["n_items"], p * phi, (1.0 - p) * phi))
                else:
                    numpyro.sample("correct", dist.BetaBinomial(p * phi, (1.0 - p) * phi, inputs["n_items"]))
            else:
                accuracy = jnp.clip(inputs["accuracy"], EDGE, 1.0 - EDGE)
                numpyro.sample("accuracy", dist.Beta(p * phi, (1.0 - p) * phi), obs=accuracy if observed else None)

    return model


def beta_binomial_kernel(k, n, a, b):
    """``log BetaBinomial(k | n, a, b)`` less its terms in ``n`` and ``k`` alone, per evaluation.

    The dropped ``log binom(n, k)`` depends on the data only, so the posterior is unchanged.
    What is left is three log rising factorials (:func:`log_rising`), each stable where the
    textbook ``lgamma(k + a) - lgamma(a)`` cancels: at a concentration ``a + b`` of 1e12 or more
    that difference lost every digit, and a chain whose optimiser had wandered there stayed
    (a task fitted alone, whose few evaluations barely bound the concentration: R-hat 1.56).
    numpyro's ``BetaBinomial.log_prob`` cancels in the same way. The cost is about the same as
    its (value and gradient for 2,560 evaluations in float64: ~1.2 ms each on this machine).
    """
    return log_rising(a, k) + log_rising(b, n - k) - log_rising(a + b, n)


#: Above this, :func:`log_rising` uses Stirling's series (its error there is below 1e-10).
STIRLING_FROM = 10.0


def log_rising(x, k):
    """``log(x (x + 1) ... (x + k - 1)) = lgamma(x + k) - lgamma(x)`` for ``x > 0, k >= 0``, without
    the cancellation of the difference at large ``x``: Stirling's series for both lgammas,
    with ``(x - 1/2) log(1 + k/x) + k log(x + k) - k`` in place of the difference of their
    leading terms (Abramowitz & Stegun 6.1.41).

    Below :data:`STIRLING_FROM` the argument is first shifted up by that much, by the recurrence
    ``rising(x, k) = rising(x + m, k) rising(x, m) / rising(x + k, m)`` with the two short
    products multiplied out: one series and the log of the products' ratio in place of two
    lgammas, whose rational approximations made the log density 3.7 times slower to evaluate
    (values only; gradients cost the same). The series' corrections share one reciprocal: with a
    division per term and a log per product, the Beta-binomial kernel took 23% longer to evaluate,
    and a lone task's log-density gradient 75% longer. Error below 1e-10 against mpmath for x in
    1e-3..1e13, k in 0..1000.
    """
    small = x < STIRLING_FROM
    low = jnp.where(small, x, 1.0)  # keeps the unused products finite, and their gradients too
    up, down = low, low + k
    for i in range(1, int(STIRLING_FROM)):
        up, down = up * (low + i), down * (low + k + i)
    shift = jnp.where(small, jnp.log(up / down), 0.0)
    return _stirling_log_rising(jnp.where(small, x + STIRLING_FROM, x), k) + shift


def _stirling_log_rising(x, k):
    def correction(z):
        r = 1.0 / z
        r2 = r * r
        return r * (1.0 / 12.0 - r2 * (1.0 / 360.0 - r2 / 1260.0))

    return (x - 0.5) * jnp.log1p(k / x) + k * jnp.log(x + k) - k + correction(x + k) - correction(x)


def sum_zero_basis(size: int) -> np.ndarray:
    """An orthonormal basis (``size x (size - 1)``) of the vectors whose entries sum to zero.

    If ``c ~ N(0, tau^2 I)`` then ``basis @ c`` has the law of ``u - mean(u)`` for
    ``u ~ N(0, tau^2 I)``: the deviations of iid family shifts from their mean.
    """
    helmert = np.eye(size) - 1.0 / size
    q, _ = np.linalg.qr(helmert[:, : size - 1])
    return q


# --- fit ----------------------------------------------------------------------


def fit_downstream(runs: RunTable, spec: DownstreamSpec, *, seed: int, settings: Settings, devices, progress: bool) -> "DownstreamFit":
    """Fit a downstream card with the compiled NUTS engine; see :func:`bayescale.fit`."""
    evals = evaluations(runs, spec)
    centre = centre_of_evaluations(evals, spec)
    inputs = model_inputs(evals, spec, centre)
    enable_compilation_cache()
    key = (spec.text, len(evals.tasks), len(evals.families))
    sampler = sampler_for(
        key, lambda: make_downstream_model(spec, len(evals.tasks), len(evals.families)), (inputs,), settings,
        devices=devices, start=NonCentredTasks(spec),
    )
    centring = choose_centring(sampler, (inputs,), site="task_raw")
    inputs["centring"] = jnp.asarray(centring)
    say(
        f"fitting card {spec.name!r} to {len(evals.frame)} evaluations of {len(evals.tasks)} tasks"
        f"{f' in {len(evals.families)} families' if len(evals.families) > 1 else ''}: {settings.num_chains} chains x "
        f"({settings.num_warmup} warm-up + {settings.num_samples} draws){'' if sampler.runs else ', compiling first'}",
        progress,
    )
    draws = sampler.run(jax.random.PRNGKey(seed), (inputs,), progress=progress)
    idata = to_inference_data(draws.samples, draws.stats, spec, runs, evals, centre, seed, centring)
    idata.attrs["target_accept"] = settings.target_accept  # what the divergence advice builds on
    result = DownstreamFit(idata=idata, spec=spec, diagnostics=downstream_diagnostics(idata, spec))
    say(f"done in {draws.seconds:.1f} s; {'no problems found' if result.diagnostics.ok else 'see warnings'}", progress)
    result.diagnostics.warn()
    return result


def downstream_diagnostics(idata, spec: DownstreamSpec) -> Diagnostics:
    """:func:`bayescale.diagnostics.diagnose` over the sampled sites a downstream fit has."""
    return diagnose(idata, [name for name in spec.sampled_parameters if name in idata.posterior])


def _typical(prior: Prior, log: bool) -> float:
    """A prior's median (its log, for a positive quantity)."""
    median = float(prior.to_numpyro().icdf(0.5))
    return float(np.log(median)) if log else median


class NonCentredTasks:
    """Where chains start (the ``start`` of :class:`bayescale.engine.Sampler`): optimise with
    every task non-centred, where the posterior has a mode, then move to the partly centred
    coordinates of the same point (as :class:`bayescale.hierarchy.NonCentredStart` does for families)."""

    def __init__(self, spec: DownstreamSpec, *, pooled: bool = True):
        self.lone = None if pooled else spec.lone_task_prior()
        self.centres = {f"mu_{name}": _typical(spec.priors[name], log=False) for name in TASK_COORDINATES}
        self.centres.update({f"tau_{name}": np.log(spread.scale) for name, spread in spec.task_spread.items()})
        self.centres.update(tau_family=np.log(spec.family_spread.scale), concentration=_typical(spec.priors["concentration"], log=True))

    def initial(self, latent: dict) -> dict:
        """The optimiser's start: near the typical task of the card's priors, jittered by a
        quarter of the uniform(-2, 2) draw (the engine's default start is that draw itself).

        From the default start, one optimiser in 4 settled in a junk mode (concentration 0.15, so
        dispersed that no rise is needed, or a slope of 10^5) on a simulated loss-to-accuracy
        recovery, where its chain never moved (R-hat 1.5).
        """
        start = {name: value * 0.25 for name, value in latent.items() if name in ("task_raw", "family_contrast")}
        start.update({name: self.centres[name] + 0.25 * latent[name] for name in latent if name in self.centres})
        return {**latent, **start}

    def args(self, args: tuple) -> tuple:
        """The model's arguments with every task non-centred (midpoints as offsets, not onsets)."""
        (inputs,) = args
        return ({**inputs, "centring": jnp.zeros_like(inputs["centring"]), "onset": jnp.asarray(False)},)

    def convert(self, latent: dict, args: tuple) -> dict:
        """Unconstrained values of the non-centred model -> those of the model with ``args``."""
        if self.lone is None:
            mu = jnp.stack([latent[f"mu_{name}"] for name in TASK_COORDINATES])
            tau = jnp.exp(jnp.stack([latent[f"tau_{name}"] for name in TASK_COORDINATES]))  # unconstrained: log tau
        else:
            mu, tau = (jnp.asarray(v) for v in self.lone)
        z = latent["task_raw"]
        midpoint, slope = mu[0] + tau[0] * z[:, 0], jnp.exp(mu[1] + tau[1] * z[:, 1])
        lam = args[0]["centring"][:, 1:]
        rest = z[:, 1:] * tau[None, 1:] ** lam + lam * mu[None, 1:]
        onset = slope * (midpoint - args[0]["anchor"])
        return {**latent, "task_raw": jnp.concatenate([onset[:, None], rest], axis=1)}


def anchor_lone_tasks(spec: DownstreamSpec, mode: dict, inputs: dict) -> np.ndarray:
    """Where each lone task's onset is measured from, for a batch of tasks fitted one by one.

    The onset coordinate ``o = slope * (midpoint - anchor)`` (:func:`_task_coordinates`) turns a
    rise beyond the data into a flat wall, but for a rise *inside* the data an anchor far from
    it makes ``o`` grow with the slope, a curved ridge: a simulated task rising over a decade in
    the middle of four decades of data took NUTS to its maximum tree depth with R-hat 1.54
    (anchored at the data's largest value), and 9.7 leapfrog steps per draw with R-hat 1.003
    anchored at its rise. Sampling the midpoint itself was worse still (973 divergences of
    4,000): a steep rise pinned between two models leaves the midpoint a range that narrows as
    the slope falls, a funnel. So each task is anchored at its midpoint at the posterior mode,
    clipped to the task's range of predictor values: the data's largest value for a task that
    has not risen, its smallest for one that had risen before the data, and the rise itself in
    between. Any anchor fixed before sampling gives the same posterior.

    Parameters
    ----------
    spec
        The card.
    mode
        The posterior modes of a batch of lone tasks, non-centred
        (:meth:`bayescale.engine.Sampler.laplace` of a sampler started by :class:`NonCentredTasks`).
    inputs
        The batch's model inputs (a leading data-set axis).

    Returns
    -------
    numpy.ndarray
        One anchor per data set of the batch.
    """
    mean, spread = spec.lone_task_prior()
    midpoint = mean[0] + spread[0] * np.asarray(mode["task_raw"])[:, 0, 0]  # non-centred at the mode
    x, mask = np.asarray(inputs["x"]), np.asarray(inputs["mask"])
    low, high = np.where(mask, x, np.inf).min(axis=1), np.where(mask, x, -np.inf).max(axis=1)
    return np.clip(midpoint, low, high)


def task_coordinates(mu: np.ndarray, tau: np.ndarray, raw: np.ndarray, centring: np.ndarray, anchor: float) -> np.ndarray:
    """Every task's (midpoint, log_slope, ceiling_logit), shape ``(S, T, 3)``, from draws of
    ``mu`` and ``tau`` (S, 3), ``task_raw`` (S, T, 3), the fit's ``centring`` (T, 3) and its
    ``anchor`` (see :func:`_task_coordinates`)."""
    mu, tau, lam = mu[:, None, 1:], tau[:, None, 1:], centring[None, :, 1:]
    rest = mu + tau ** (1.0 - lam) * (raw[..., 1:] - lam * mu)
    midpoint = anchor + raw[..., 0] / np.exp(rest[..., 0])
    return np.concatenate([midpoint[..., None], rest], axis=-1)


def to_inference_data(samples: dict, stats: dict, spec: DownstreamSpec, runs: RunTable, evals: Evaluations, centre: dict, seed: int, centring: np.ndarray, *, pooled: bool = True):
    """Draws of a downstream fit (``(chain, draw, ...)`` arrays) as arviz InferenceData with provenance."""
    p = samples["p"]
    samples = {k: v for k, v in samples.items() if k != "p"}
    frame = evals.frame
    rng = np.random.default_rng([seed, 2])
    phi = samples["concentration"][..., None]
    n_items = frame["n_items"].to_numpy(dtype=float) if evals.counted else None
    predicted = _observe(p, phi, n_items, rng)
    dims = {"mu": ["task_coordinate"], "tau": ["task_coordinate"], "task_raw": ["task", "task_coordinate"], "family_offset": ["family"], "family_contrast": ["contrast"]}
    constant = {
        "flops": frame["flops"].to_numpy(dtype=float),
        "task_index": category_codes(frame["task"], evals.tasks),
        "family_index": category_codes(frame["family"], evals.families),
        "chance": evals.chance,
        "centring": centring,
    }
    if evals.counted:
        constant["n_items"] = n_items
    if spec.predictor == "loss":
        constant["loss"] = frame["loss"].to_numpy(dtype=float)
    attrs = {
        "model_card": spec.text,
        "model_name": spec.name,
        "model_kind": spec.kind,
        "data_hash": runs.hash(),
        "data_source": runs.source,
        "bayescale_version": __version__,
        "centre": json.dumps(centre),
        "families": json.dumps(evals.families),
        "tasks": json.dumps(evals.tasks),
        "tasks_pooled": int(pooled),
        "seed": seed,
    }
    return az.from_dict(
        posterior=samples,
        posterior_predictive={"accuracy": predicted},
        sample_stats=stats,
        observed_data={"accuracy": frame["accuracy"].to_numpy(dtype=float)},
        constant_data=constant,
        coords={"task": evals.tasks, "family": evals.families, "contrast": np.arange(max(len(evals.families) - 1, 1)), "task_coordinate": list(TASK_COORDINATES), "obs": np.arange(len(frame))},
        dims={**dims, "accuracy": ["obs"], "chance": ["task"], "centring": ["task", "task_coordinate"], **{k: ["obs"] for k in ("flops", "task_index", "family_index", "n_items", "loss")}},
        attrs=attrs,
    )


def _observe(p: np.ndarray, phi: np.ndarray, n_items: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Observed accuracies drawn around expected accuracies ``p`` (any leading shape, rows last):
    Beta-binomial counts over ``n_items`` when known, else Beta draws with concentration ``phi``."""
    p = np.clip(p, EDGE, 1.0 - EDGE)
    rate = rng.beta(p * phi, (1.0 - p) * phi)
    if n_items is None:
        return rate
    return rng.binomial(n_items.astype(np.int64), rate) / n_items


# --- the fitted model -----------------------------------------------------------


@dataclass(frozen=True)
class DownstreamFit(Posterior):
    """A fitted downstream card: posterior draws of every task's rise, and diagnostics.

    Made by :func:`bayescale.fit` with a downstream card (or :func:`bayescale.load`).
    ``centre`` holds the predictor's centring values (mean log10 compute; loss cards: mean loss).

    Attributes
    ----------
    idata
        arviz InferenceData (``posterior`` with dims ``task``, ``family``; ``posterior_predictive``
        accuracies of the fitted rows; ``observed_data``; ``constant_data``; provenance attributes).
    spec
        The downstream card.
    diagnostics
        Convergence diagnostics with advice.
    """

    spec: DownstreamSpec

    @property
    def tasks(self) -> list[str]:
        """Fitted tasks."""
        return json.loads(self.idata.attrs["tasks"])

    def observed(self) -> pd.DataFrame:
        """The fitted evaluations: ``flops``, ``task``, ``family``, ``chance``, ``accuracy`` (and
        ``n_items``; for loss-linked cards ``loss``), so that the frame refits to the same model."""
        constant = self.idata.constant_data
        frame = pd.DataFrame({"flops": constant["flops"].values})
        frame["task"] = np.asarray(self.tasks)[constant["task_index"].values]
        frame["family"] = np.asarray(self.families)[constant["family_index"].values]
        frame["chance"] = constant["chance"].values[constant["task_index"].values]
        frame["accuracy"] = self.idata.observed_data["accuracy"].values
        for column in ("n_items", "loss"):
            if column in constant:
                frame[column] = constant[column].values
        return frame

    @property
    def pooled(self) -> bool:
        """Whether the tasks were pooled (:func:`bayescale.fit`) or each fitted on its own
        (:func:`bayescale.fit_many`, with :meth:`DownstreamSpec.lone_task_prior` as its prior)."""
        return bool(int(self.idata.attrs.get("tasks_pooled", 1)))

    def _flat(self, name: str) -> np.ndarray:
        return self.draws([name])[name]

    def _population(self) -> tuple[np.ndarray, np.ndarray]:
        """Draws ``(S, 3)`` of the task population's mean and spread (constants for a lone task)."""
        if self.pooled:
            return self._flat("mu"), self._flat("tau")
        size = self._flat("concentration").shape[0]
        return tuple(np.broadcast_to(v, (size, len(TASK_COORDINATES))) for v in self.spec.lone_task_prior())

    def task_draws(self, task: str) -> dict[str, np.ndarray]:
        """Draws of one task's ``midpoint``, ``slope``, ``chance`` and ``ceiling`` (1-D arrays).

        ``midpoint`` is in the predictor's centred units (decades of compute from the data's
        centre, or nats of minus the loss from its mean).

        Parameters
        ----------
        task
            A fitted task.

        Returns
        -------
        dict
        """
        if task not in self.tasks:
            raise ValueError(f"task {task!r} is not in the fitted data ({', '.join(self.tasks[:8])}{', ...' if len(self.tasks) > 8 else ''})")
        t = self.tasks.index(task)
        centring = self.idata.constant_data["centring"].values
        w = task_coordinates(*self._population(), self._flat("task_raw"), centring, self.centre["anchor"])[:, t, :]
        chance = float(self.idata.constant_data["chance"].values[t])
        return {
            "midpoint": w[:, 0],
            "slope": np.exp(w[:, 1]),
            "chance": np.full(w.shape[0], chance),
            "ceiling": chance + (1.0 - chance) / (1.0 + np.exp(-w[:, 2])),
        }

    def resolve_family(self, family: str | None) -> str:
        """The family a prediction is for: ``family`` itself, or when it is ``None`` the only
        fitted family, or with several families ``"new"``: a family drawn from the population,
        whose interval includes the spread between families (the honest answer for a family
        the caller did not name).

        Parameters
        ----------
        family
            A family name, or None.

        Returns
        -------
        str
        """
        if family is not None:
            return family
        return self.families[0] if len(self.families) == 1 else NEW_FAMILY

    def family_offset(self, family: str | None, *, seed: int = 0) -> np.ndarray:
        """Draws of a family's shift along the predictor (zeros for a single-family fit).

        Parameters
        ----------
        family
            A fitted family, ``"new"`` for an unseen one (drawn from the population of
            families), or ``None`` (see :meth:`resolve_family`).
        seed
            Seed of a new family's draws.

        Returns
        -------
        numpy.ndarray
        """
        size = self._flat("concentration").shape[0]
        family = self.resolve_family(family)
        if len(self.families) == 1:
            if family not in (self.families[0], NEW_FAMILY):
                raise ValueError(f"family {family!r} is not in the fitted data ({self.families[0]})")
            return np.zeros(size)
        if family == NEW_FAMILY:
            # A new family's shift from the fitted families' mean: its own N(0, tau) deviation
            # plus the uncertainty of that mean, tau^2 / F.
            spread = self._flat("tau_family") * np.sqrt(1.0 + 1.0 / len(self.families))
            return spread * np.random.default_rng([seed, 3]).standard_normal(size)
        if family not in self.families:
            raise ValueError(
                f"family {family!r} is not in the fitted data ({', '.join(self.families[:6])}); name one of those, "
                "or family='new' for a family not in the data"
            )
        return self._flat("family_offset")[:, self.families.index(family)]

    def predictor(self, flops: np.ndarray) -> np.ndarray:
        """The card's centred predictor at compute ``flops``, per draw: shape ``(S, len(flops))``.

        Parameters
        ----------
        flops
            Training compute (1-D array).

        Returns
        -------
        numpy.ndarray
        """
        flops = np.asarray(flops, dtype=float)
        if self.spec.predictor == "log_flops":
            x = np.log10(flops) - self.centre["log10_flops"]
            return np.broadcast_to(x, (self._flat("concentration").shape[0], x.size))
        return -(self.loss_at(flops) - self.centre["loss"])

    def loss_at(self, flops: np.ndarray) -> np.ndarray:
        """Loss-linked cards: the jointly fitted law's loss at ``flops``, per draw ``(S, len(flops))``.

        Parameters
        ----------
        flops
            Training compute (1-D array).

        Returns
        -------
        numpy.ndarray
        """
        law = self.spec.loss_model.law
        theta = {name: self._flat(name)[:, None] for name in law.parameters}
        x = {"flops": np.log(np.asarray(flops, dtype=float))[None, :] - self.centre["flops"]}
        return np.exp(np.asarray(law.log_loss(theta, x)))

    def accuracy_draws(self, flops, task: str, family: str | None = None, *, noise: bool = False, n_items=None, seed: int = 0) -> np.ndarray:
        """Draws of accuracy at ``flops`` for one task: shape ``(S, len(flops))``.

        Parameters
        ----------
        flops
            Training compute (scalar or 1-D array).
        task
            A fitted task.
        family
            A fitted family, ``"new"``, or ``None`` (see :meth:`resolve_family`).
        noise
            Draw the accuracy a new evaluation on ``n_items`` items would *observe*, rather
            than the expected accuracy.
        n_items
            Items of that evaluation (default: the task's ``n_items`` in the fitted data).
        seed
            Seed of the noise and new-family draws.

        Returns
        -------
        numpy.ndarray
        """
        flops = _positive("flops", flops)
        theta = self.task_draws(task)
        x = self.predictor(flops) + self.family_offset(family, seed=seed)[:, None]
        p = np.asarray(self.spec.link.accuracy(x, theta["midpoint"][:, None], theta["slope"][:, None], theta["chance"][:, None], theta["ceiling"][:, None]))
        if not noise:
            return p
        if n_items is None and "n_items" in self.idata.constant_data:
            observed = self.observed()
            n_items = float(observed.loc[observed["task"] == task, "n_items"].iloc[-1])
        items = None if n_items is None else np.full(p.shape[1], float(n_items))
        return _observe(p, self._flat("concentration")[:, None], items, np.random.default_rng([seed, 4]))

    def predict(self, flops, task: str | list[str] | None = None, family: str | None = None, *, noise: bool = False, n_items=None, draws: bool = False, seed: int = 0) -> pd.DataFrame:
        """Posterior predictive accuracy at new compute.

        Parameters
        ----------
        flops
            Training compute(s) in FLOP: a number or a 1-D list.
        task
            A fitted task, a list of them, or ``None`` for every task.
        family
            A fitted family, ``"new"`` for a family not in the data, or ``None``: the only
            family of a single-family fit, ``"new"`` with several (:meth:`resolve_family`).
        noise
            Predict the accuracy an evaluation would *observe* (binomial and over-dispersion
            noise on ``n_items`` items) rather than the expected accuracy.
        n_items
            Items of the new evaluation (default: the task's, as fitted).
        draws
            Add a ``draws`` column holding each row's draws.
        seed
            Seed of the noise and of a new family's draws.

        Returns
        -------
        pandas.DataFrame
            One row per (task, flops): ``flops``, ``task``, ``family``, ``quantity``
            (``"accuracy"``), ``mean`` and the quantiles ``q2.5 ... q97.5``.
        """
        from .predict import QUANTILES

        flops = _positive("flops", flops)
        tasks = self.tasks if task is None else [task] if isinstance(task, str) else list(task)
        frames = []
        for name in tasks:
            values = self.accuracy_draws(flops, name, family, noise=noise, n_items=n_items, seed=seed)
            frame = pd.DataFrame({"flops": flops, "task": name, "family": self.resolve_family(family), "quantity": "accuracy", "mean": values.mean(axis=0)})
            for label, q in QUANTILES.items():
                frame[label] = np.quantile(values, q, axis=0)
            if draws:
                frame["draws"] = list(values.T)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def summary(self) -> pd.DataFrame:
        """Posterior summary: each task, the typical task and the spreads (of a pooled fit), the over-dispersion.

        Returns
        -------
        pandas.DataFrame
            One row per parameter (``midpoint_flops[task]`` is the compute at the middle of
            the task's rise, ``slope[task]`` its steepness per decade of compute (per nat of
            loss for loss-linked cards), ``ceiling[task]``, the spreads ``tau[...]``, the
            family shifts and ``concentration``), with columns ``parameter, mean, sd, q2.5,
            q50, q97.5, r_hat, ess_bulk, ess_tail``.
        """
        from .fit import summary_rows

        chains = self.idata.posterior.sizes["chain"]
        entries = []
        for task in self.tasks:
            theta = self.task_draws(task)
            entries.append((f"{self._midpoint_name()}[{task}]", self._midpoint_natural(theta["midpoint"])))
            entries += [(f"slope[{task}]", theta["slope"]), (f"ceiling[{task}]", theta["ceiling"])]
        for j, name in enumerate(TASK_COORDINATES if self.pooled else ()):
            entries += [(f"{name}[population]", self._flat("mu")[:, j]), (f"tau[{name}]", self._flat("tau")[:, j])]
        if "tau_family" in self.idata.posterior:
            entries.append(("tau[family]", self._flat("tau_family")))
            entries += [(f"family_offset[{family}]", self.family_offset(family)) for family in self.families]
        entries.append(("concentration", self._flat("concentration")))
        return pd.DataFrame(summary_rows([(name, values.reshape(chains, -1)) for name, values in entries]))

    def _midpoint_name(self) -> str:
        return "midpoint_flops" if self.spec.predictor == "log_flops" else "midpoint_loss"

    def _midpoint_natural(self, midpoint: np.ndarray) -> np.ndarray:
        if self.spec.predictor == "log_flops":
            return 10.0 ** (midpoint + self.centre["log10_flops"])
        return self.centre["loss"] - midpoint


def _positive(name: str, value) -> np.ndarray:
    array = np.atleast_1d(np.asarray(value, dtype=float))
    if array.ndim != 1 or not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise ValueError(f"{name} must be a positive number or a 1-D list of them, got {value!r}")
    return array
