"""Hierarchical cards: families pooled towards a population, runs as random effects.

Model (a card with a ``[pooling]`` section; DESIGN.md section 4)::

    mu                ~ the card's priors           (the population's typical family)
    tau_k             ~ HalfNormal(scale_k)         (spread of pooled coordinate k)
    u[f, k]           ~ Normal(mu_k, tau_k)         pooled
    u[f, k]           = mu_k                        shared
    u[f, k]           ~ Normal(mu_k, scale_k)       free (fixed spread: no borrowing)
    theta_f           = the card's parameters at u[f]   (bayescale.coordinates)
    log L[i]          = law(theta_{family[i]}, x[i]) + r[run[i]] + eps[i]
    r[run]            ~ Normal(0, sigma_run)        (seed-to-seed / run-to-run spread)
    eps[i]            ~ Normal(0, sigma)            (checkpoint noise)

Why these choices (docs/developer/design.md has the measurements):

* **Pooling happens in the sampler's coordinates** (log total loss at the centre, share
  logits, log exponents), not in ``e, a_c, b_c``: each is unbounded and well scaled, and the
  per-family E-A-alpha ridge that stalls NUTS in the card's coordinates is flat in them.
* **Centred where the data speak, non-centred where they do not.** A family whose data
  vary every input that identifies an exponent over at least :data:`RICH_SIZES` values
  pins its own coordinates, and then the centred form is the well-conditioned one; a
  family with one or two sizes is mostly prior, where the non-centred form avoids the
  funnel (Betancourt & Girolami 2015; Gorinova et al. 2020 choose per group the same way).
  The choice is data (``centred``), so one compiled program serves both.
* **The run effect is integrated out in closed form.** Given the law, the rows of one run
  are jointly normal with covariance ``sigma^2 I + sigma_run^2 11'`` (Sherman-Morrison
  gives its inverse and determinant), so no per-run parameter is sampled: hundreds of runs
  cost nothing in dimension, and 20 checkpoints of one run count as less than 20 runs.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd

from .coordinates import card_log_prior, coordinate_names, to_parameters
from .data import DataError, RunTable
from .spec import ModelSpec

#: A family coordinate is sampled centred where the Laplace approximation at the non-centred
#: mode gives its offset a marginal variance below this (the prior's is 1): the data then pin
#: it more tightly than the population's spread does.
CENTRED_VARIANCE = 0.1


#: Name under which predictions and summaries refer to a family not in the data.
NEW_FAMILY = "new"


class Layout(NamedTuple):
    """Which coordinates vary by family and how (built from a card by :func:`layout_of`)."""

    names: tuple[str, ...]
    varying: np.ndarray  # indices of the coordinates that are not shared
    pooled: np.ndarray  # positions, within ``varying``, of the pooled ones
    fixed_spread: np.ndarray  # spread of each varying coordinate (pooled ones overwritten by tau)
    tau_scale: np.ndarray  # half-normal scale of each pooled coordinate's tau

    @property
    def pooled_names(self) -> list[str]:
        """Names of the pooled coordinates (the entries of ``tau``)."""
        return [self.names[self.varying[k]] for k in self.pooled]

    @property
    def varying_names(self) -> list[str]:
        """Names of the coordinates that differ between families (the columns of ``family_raw``)."""
        return [self.names[k] for k in self.varying]


def layout_of(spec: ModelSpec) -> Layout:
    """The :class:`Layout` of a hierarchical card."""
    names = coordinate_names(spec.law)
    modes = [spec.pooling[name].mode for name in names]
    varying = np.array([k for k, mode in enumerate(modes) if mode != "shared"], dtype=int)
    pooled = np.array([j for j, k in enumerate(varying) if modes[k] == "pooled"], dtype=int)
    spread = np.array([spec.pooling[names[k]].scale for k in varying], dtype=float)
    return Layout(names, varying, pooled, spread, spread[pooled] if len(pooled) else np.zeros(0))


def family_coordinates(layout: Layout, mu, tau, raw, centred):
    """Each family's coordinates and the log-density of its sampled values.

    Parameters
    ----------
    mu
        Population mean, shape ``(K,)``.
    tau
        Spread of the pooled coordinates, shape ``(len(layout.pooled),)``.
    raw
        Sampled values, shape ``(F, len(layout.varying))``: the coordinates themselves for a
        centred family, standard-normal offsets for a non-centred one.
    centred
        Booleans, shape ``(F,)``.

    Returns
    -------
    (u, log_density)
        ``u`` of shape ``(F, K)`` and the log-density of ``raw`` given ``mu`` and ``tau``.
    """
    families = centred.shape[0]
    u = jnp.broadcast_to(mu[None, :], (families, mu.shape[0]))
    if len(layout.varying) == 0:
        return u, jnp.zeros(())
    spread = jnp.asarray(layout.fixed_spread).at[layout.pooled].set(tau) if len(layout.pooled) else jnp.asarray(layout.fixed_spread)
    mean, spread = mu[layout.varying][None, :], spread[None, :]
    values = jnp.where(centred, raw, mean + spread * raw)
    log_density = jnp.where(centred, dist.Normal(mean, spread).log_prob(raw), dist.Normal(0.0, 1.0).log_prob(raw))
    return u.at[:, layout.varying].set(values), log_density.sum()


def run_log_likelihood(residual, run, num_runs: int, sigma, sigma_run, mask):
    """Log-likelihood of log-loss residuals with a normal run effect integrated out.

    For a run with ``n`` rows, ``residual ~ N(0, sigma^2 I + sigma_run^2 11')``, whose
    inverse is ``(I - w 11') / sigma^2`` with ``w = sigma_run^2 / (sigma^2 + n sigma_run^2)``
    and whose log-determinant is ``n log sigma^2 + log(1 + n sigma_run^2 / sigma^2)``.
    Rows where ``mask`` is false are left out.
    """
    weight = mask.astype(residual.dtype)
    count = jax.ops.segment_sum(weight, run, num_runs)
    total = jax.ops.segment_sum(weight * residual, run, num_runs)
    squares = jax.ops.segment_sum(weight * residual**2, run, num_runs)
    var, var_run = sigma**2, sigma_run**2
    shrink = var_run / (var + count * var_run)
    quadratic = (squares - shrink * total**2) / var
    return -0.5 * jnp.sum(quadratic + count * jnp.log(2 * jnp.pi * var) + jnp.log1p(count * var_run / var))


def make_hierarchical_model(spec: ModelSpec):
    """Build the numpyro model of a hierarchical card (module docstring).

    Returns
    -------
    callable
        ``model(x, log_loss, groups, mask=None)``: ``x`` the centred log inputs per row;
        ``groups`` the arrays of :func:`groups_of` (family and run of each row, which
        families are centred, whether runs have several rows).
    """
    law, layout = spec.law, layout_of(spec)
    priors = {name: prior.to_numpyro() for name, prior in spec.priors.items()}
    flat_mu = dist.ImproperUniform(dist.constraints.real, (), (len(layout.names),))

    def model(x, log_loss, groups, mask=None):
        mu = numpyro.sample("mu", flat_mu)
        # The card's priors describe the typical family: exact in these coordinates (coordinates.py).
        numpyro.factor("prior_mu", card_log_prior(law, priors, dict(zip(layout.names, mu)))[1])
        tau = numpyro.sample("tau", dist.HalfNormal(layout.tau_scale).to_event(1)) if len(layout.pooled) else None
        centred = groups["centred"]
        raw = None
        if len(layout.varying):
            shape = (centred.shape[0], len(layout.varying))
            raw = numpyro.sample("family_raw", dist.ImproperUniform(dist.constraints.real, (), shape))
        u, log_density = family_coordinates(layout, mu, tau, raw, centred)
        numpyro.factor("prior_family", log_density)
        theta, _ = to_parameters(law, {name: u[:, k] for k, name in enumerate(layout.names)})
        mean = law.log_loss({name: value[groups["family"]] for name, value in theta.items()}, x)
        sigma = numpyro.sample("sigma", priors["sigma"])
        # Where no run has two rows, run and checkpoint noise cannot be told apart: the run
        # effect is switched off and sigma_run stays at its prior (groups_of says so).
        sigma_run = numpyro.sample("sigma_run", priors["sigma_run"])
        rows = jnp.ones(mean.shape, bool) if mask is None else mask
        numpyro.factor(
            "log_likelihood",
            run_log_likelihood(log_loss - mean, groups["run"], groups["run_rows"].shape[0], sigma, sigma_run * groups["run_effect"], rows),
        )

    return model


def check_families(runs: RunTable, spec: ModelSpec) -> None:
    """Raise :class:`DataError` unless every family can take part in a pooled fit."""
    runs.require(spec.law.inputs, spec.law.exponents)
    counts = runs.data.groupby("family", sort=False).size() if "family" in runs.data else pd.Series({runs.families[0]: len(runs)})
    single = counts[counts < 2]
    if len(single):
        raise DataError(
            f"families {', '.join(map(str, single.index[:5]))} have a single observation each; a family needs at "
            "least two (two model sizes, or two checkpoints) to say anything of its own. Add runs, or drop those rows"
        )


def groups_of(runs: RunTable, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The arrays a hierarchical model needs besides the inputs and losses.

    ``family`` and ``run``: integer codes per row (:meth:`RunTable.run_ids`); ``centred``: per
    family and varying coordinate, whether it is sampled centred (all false here; see
    :func:`choose_centring`); ``run_rows``: rows per run; ``run_effect``: 1.0 if some run has
    several rows, else 0.0.
    """
    family = runs.family_codes()
    run = runs.run_ids()
    rows = np.bincount(run).astype(float)
    return {
        "family": family.astype(np.int32),
        "run": run.astype(np.int32),
        "centred": np.zeros((len(runs.families), len(layout_of(spec).varying)), bool),
        "run_rows": rows,
        "run_effect": np.asarray(float(rows.max() > 1)),
    }


class NonCentredStart:
    """Where chains of a hierarchical model start (the ``start`` of :class:`bayescale.engine.Sampler`).

    With a coordinate centred in two or more families the joint density has no mode (it
    grows without bound as tau goes to 0 with those families at mu), so chains optimise
    with every family non-centred, where a mode exists, and then move to the centred
    values ``mu + tau * z``.
    """

    def __init__(self, layout: Layout):
        self.layout = layout

    def args(self, args: tuple) -> tuple:
        """The model's arguments with every family non-centred."""
        x, log_loss, groups, *rest = args
        return (x, log_loss, {**groups, "centred": jnp.zeros_like(groups["centred"])}, *rest)

    def convert(self, latent: dict, args: tuple) -> dict:
        """Unconstrained values of the non-centred model -> those of the model with ``args``."""
        layout = self.layout
        if len(layout.varying) == 0:
            return latent
        spread = jnp.asarray(layout.fixed_spread)
        if len(layout.pooled):
            spread = spread.at[layout.pooled].set(jnp.exp(latent["tau"]))  # tau's unconstrained value is log tau
        raw = latent["family_raw"]
        centred_values = latent["mu"][layout.varying][None, :] + spread[None, :] * raw
        return {**latent, "family_raw": jnp.where(args[2]["centred"], centred_values, raw)}


def choose_centring(sampler, args: tuple) -> np.ndarray:
    """Which family coordinates to sample centred: where the data dominate the prior.

    An offset ``z`` has prior variance 1. Where, given the population (mu, tau) and the
    other families, its posterior variance (Laplace approximation at the non-centred mode,
    marginal over the family's other coordinates) is below :data:`CENTRED_VARIANCE`, the
    data pin the coordinate more tightly than the population spread does: the regime where
    the centred form is the better conditioned one (Betancourt & Girolami 2015). Marginal
    within the family, because its terms and exponents trade off: a coordinate can be sharply
    curved with the others held fixed and still loosely pinned. Conditional on the
    population, because that is the funnel's question: can the family leave mu when tau shrinks?
    """
    _, hessian, positions = sampler.laplace(args)
    blocks = positions["family_raw"]  # (F, Kv) positions in the flat vector
    variance = np.stack([np.diag(_inverse(hessian[np.ix_(rows, rows)])) for rows in blocks])
    return variance < CENTRED_VARIANCE


def _inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric matrix with eigenvalues floored (a Hessian off the mode)."""
    values, vectors = np.linalg.eigh(0.5 * (matrix + matrix.T))
    return (vectors / np.clip(values, 1e-6, None)) @ vectors.T


def population_draws(spec: ModelSpec, posterior, family: int | None, rng: np.random.Generator | None = None) -> dict:
    """Coordinates -> the law's parameters for one family, or for a new one.

    Parameters
    ----------
    posterior
        Mapping of ``mu`` (S, K), ``tau`` (S, Kp), ``family_raw`` (S, F, Kv) and ``centred`` (F,).
    family
        Index of a fitted family, or ``None`` for a family not in the data, whose coordinates
        are drawn from the population (pooled: Normal(mu, tau); free: Normal(mu, scale);
        shared: mu) with ``rng``.

    Returns
    -------
    dict
        The law's parameters, each of shape (S,).
    """
    layout = layout_of(spec)
    mu = np.asarray(posterior["mu"])
    u = mu.copy()
    if len(layout.varying):
        spread = np.broadcast_to(layout.fixed_spread, (mu.shape[0], len(layout.varying))).copy()
        if len(layout.pooled):
            spread[:, layout.pooled] = np.asarray(posterior["tau"])
        mean = mu[:, layout.varying]
        if family is None:
            u[:, layout.varying] = mean + spread * rng.standard_normal(mean.shape)
        else:
            raw = np.asarray(posterior["family_raw"])[:, family, :]
            u[:, layout.varying] = np.where(posterior["centred"][family], raw, mean + spread * raw)
    theta, _ = to_parameters(spec.law, {name: jnp.asarray(u[:, k]) for k, name in enumerate(layout.names)})
    return {name: np.asarray(value) for name, value in theta.items()}


def family_parameters(spec: ModelSpec, posterior, families: list[str]) -> dict[str, np.ndarray]:
    """Every fitted family's law parameters, each of shape ``(S, F)``."""
    per_family = [population_draws(spec, posterior, f) for f in range(len(families))]
    return {name: np.stack([draws[name] for draws in per_family], axis=-1) for name in spec.law.parameters}


@jax.jit
def _run_sums(residual, run, run_rows):
    """Per-run sums of residuals ``(S, P)`` -> ``(S, R)``."""
    return jax.vmap(lambda r: jax.ops.segment_sum(r, run, run_rows.shape[0]))(residual)


def simulate_rows(spec: ModelSpec, theta: dict, noise: dict, groups: dict, x: dict, log_loss: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Posterior predictive log losses of the fitted rows: a replicate of each *observed* run.

    Each run's effect is drawn from its conditional posterior given the draw's law and the
    run's residuals (normal-normal conjugacy), then fresh checkpoint noise is added.
    ``theta`` holds (S, F) arrays, ``noise`` the (S,) draws of ``sigma`` and ``sigma_run``.
    """
    family = np.asarray(groups["family"])
    theta_rows = {name: jnp.asarray(value[:, family]) for name, value in theta.items()}
    mean = np.asarray(spec.law.log_loss(theta_rows, {k: jnp.asarray(v)[None, :] for k, v in x.items()}))
    var = noise["sigma"][:, None] ** 2
    var_run = (noise["sigma_run"][:, None] * float(groups["run_effect"])) ** 2
    count = np.asarray(groups["run_rows"])[None, :]
    total = np.asarray(_run_sums(jnp.asarray(log_loss[None, :] - mean), jnp.asarray(groups["run"]), jnp.asarray(groups["run_rows"])))
    shrink = var_run / (var + count * var_run)
    effect = shrink * total + np.sqrt(shrink * var) * rng.standard_normal(total.shape)
    return mean + effect[:, np.asarray(groups["run"])] + np.sqrt(var) * rng.standard_normal(mean.shape)
