"""Hierarchical cards: families pooled towards a population, runs as random effects.

Model (a card with a ``[pooling]`` section; DESIGN.md section 4)::

    mu                ~ the card's priors           (the population's typical family)
    tau_k             ~ Gamma(4, 4 / scale_k)       (spread of pooled coordinate k; mean scale_k)
    u[f, k]           ~ Normal(mu_k, tau_k)         pooled
    u[f, k]           = mu_k                        shared
    u[f, k]           ~ Normal(mu_k, scale_k)       fixed (the card asserts the spread)
    theta_f           = the card's parameters at u[f]   (bayescale.coordinates)
    log L[i]          = law(theta_{family[i]}, x[i]) + r[run[i]] + eps[i]
    r[run]            ~ Normal(0, sigma_run)        (seed-to-seed / run-to-run spread)
    eps[i]            ~ Normal(0, sigma)            (checkpoint noise)

Why these choices (docs/developer/design.md has the measurements):

* **Pooling happens in the sampler's coordinates** (log total loss at the centre, share
  logits, log exponents), not in ``e, a_c, b_c``: each is unbounded and well scaled, and the
  per-family E-A-alpha ridge that stalls NUTS in the card's coordinates is flat in them.
* **Centred as far as the data speak.** Where a family's data pin a coordinate more
  tightly than the population spread, the centred form is the well-conditioned one; where
  they pin it less, the non-centred form avoids the funnel (Betancourt & Girolami 2015).
  Each family coordinate is sampled as ``raw ~ N(lambda mu, tau^lambda)``,
  ``u = mu + tau^(1-lambda) (raw - lambda mu)`` (Gorinova, Moore & Hoffman 2020,
  "Automatic reparameterisation of probabilistic programs", sec. 3.2: lambda = 1 centred,
  0 non-centred), with ``lambda = tau^2 / (tau^2 + s^2)``, the choice that decorrelates
  ``raw`` from the population in a normal model, evaluated before sampling from a Laplace
  approximation (:func:`choose_centring`; ``s`` is how precisely the family's own data pin
  the coordinate). Any lambda gives ``u ~ N(mu, tau)`` exactly, so the model is unchanged;
  lambda is data, so one compiled program serves every data set. (Evaluating lambda at each
  draw's tau instead, so that it adapts across a wide tau posterior, made the map too
  curved for the adapted mass matrix: 130 leapfrog steps per draw instead of 30.)
* **A spread near zero is implausible a priori.** tau's prior is Gamma(4) with mean the
  card's ``scale`` (density proportional to tau^3 near zero; 95% of its mass between 0.27
  and 2.2 times the scale), not half-normal: families that differ in recipe or architecture
  never share an exponent to the third digit, and a few families cannot learn a spread, so
  the prior must say what is plausible. With a half-normal prior the posterior of a weakly
  identified spread piled up near zero, the neck of a funnel where NUTS diverged (Chung et
  al. 2013, "A nondegenerate penalized likelihood estimator for variance parameters in
  multilevel models", argue for zero-avoiding gamma priors on the same grounds); Gamma(2)
  still let it reach 4% of the scale with 3-6 families, and divergences stayed there. The
  cost: a family's parameters are pooled a little less when the families truly coincide.
* **Pool what the data can identify.** A card may assert a coordinate's spread
  (``mode = "fixed"``) where the data cannot learn it: from one or two decades of sizes each
  family's alpha is pinned only to ~15%, and a learned spread of alpha ranged from 0.006 to
  0.16 in one posterior, reaching into the neck again; with three families, the same held
  for beta (``models/chinchilla-hierarchical.toml`` fixes both).
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



#: Shape of the Gamma prior of each pooled spread (module docstring: why 4).
TAU_PRIOR_SHAPE = 4.0

#: Run-to-run spread of log loss above which a fit is flagged: seeds of one configuration differ
#: by ~0.5-1% (the card's sigma_run prior), so 5% means runs are not scattered around the law.
MAX_PLAUSIBLE_RUN_SPREAD = 0.05

#: Name under which predictions and summaries refer to a family not in the data.
NEW_FAMILY = "new"


class Layout(NamedTuple):
    """Which coordinates vary by family and how (built from a card by :func:`layout_of`)."""

    names: tuple[str, ...]
    varying: np.ndarray  # indices of the coordinates that are not shared
    pooled: np.ndarray  # positions, within ``varying``, of the pooled ones
    fixed_spread: np.ndarray  # spread of each varying coordinate (pooled ones overwritten by tau)
    tau_scale: np.ndarray  # prior mean of each pooled coordinate's tau

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


def spreads(layout: Layout, tau):
    """The spread of each varying coordinate: tau where pooled, the card's scale where fixed."""
    spread = jnp.asarray(layout.fixed_spread)
    return spread.at[layout.pooled].set(tau) if len(layout.pooled) else spread


def family_coordinates(layout: Layout, mu, tau, raw, centring):
    """Each family's coordinates and the log-density of its sampled values.

    Parameters
    ----------
    mu
        Population mean, shape ``(K,)``.
    tau
        Spread of the pooled coordinates, shape ``(len(layout.pooled),)``.
    raw
        Sampled values, shape ``(F, len(layout.varying))``: the coordinates themselves where
        centred, standard-normal offsets where non-centred, in between otherwise.
    centring
        ``lambda`` of each family coordinate (:func:`choose_centring`), shape ``(F, len(layout.varying))``.

    Returns
    -------
    (u, log_density)
        ``u`` of shape ``(F, K)`` and the log-density of ``raw`` given ``mu`` and ``tau``.
    """
    families = centring.shape[0]
    u = jnp.broadcast_to(mu[None, :], (families, mu.shape[0]))
    if len(layout.varying) == 0:
        return u, jnp.zeros(())
    mean, spread, lam = mu[layout.varying][None, :], spreads(layout, tau)[None, :], centring
    values = mean + spread ** (1.0 - lam) * (raw - lam * mean)
    log_density = dist.Normal(lam * mean, spread**lam).log_prob(raw)
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
        ``groups`` the arrays of :func:`groups_of` (family and run of each row, how far
        each family coordinate is centred, whether runs have several rows).
    """
    law, layout = spec.law, layout_of(spec)
    priors = {name: prior.to_numpyro() for name, prior in spec.priors.items()}
    flat_mu = dist.ImproperUniform(dist.constraints.real, (), (len(layout.names),))

    def model(x, log_loss, groups, mask=None):
        mu = numpyro.sample("mu", flat_mu)
        # The card's priors describe the typical family: exact in these coordinates (coordinates.py).
        numpyro.factor("prior_mu", card_log_prior(law, priors, dict(zip(layout.names, mu)))[1])
        tau = numpyro.sample("tau", dist.Gamma(TAU_PRIOR_SHAPE, TAU_PRIOR_SHAPE / layout.tau_scale).to_event(1)) if len(layout.pooled) else None
        centring = groups["centring"]
        raw = None
        if len(layout.varying):
            raw = numpyro.sample("family_raw", dist.ImproperUniform(dist.constraints.real, (), centring.shape))
        u, log_density = family_coordinates(layout, mu, tau, raw, centring)
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


def run_spread_problem(sigma_run: np.ndarray) -> str | None:
    """A plain-language warning when the fitted seed-to-seed spread is implausibly large.

    A run offset of several percent is what the model falls back on when the law fits the
    checkpoints *within* runs but not the runs' levels *across* sizes: each run's offset
    then absorbs the size trend, and the law's extrapolation in size is not to be trusted.
    Measured on Gemstones (McLeish et al. 2025) constant-learning-rate checkpoints: sigma_run
    0.16 against under 1% scatter of the runs around a single-family fit (docs/concepts.md).
    """
    spread = float(np.median(sigma_run))
    if spread <= MAX_PLAUSIBLE_RUN_SPREAD:
        return None
    return (
        f"runs differ from their family's law by {100 * spread:.0f}% (sigma_run), far more than seeds of one "
        "configuration do (~1%): the law fits the checkpoints within runs but not the runs across sizes, and "
        "the run offsets are absorbing the size trend, so predictions at other sizes are not to be trusted. "
        "If the rows are intermediate checkpoints of constant-learning-rate or cosine runs, fit final (or "
        "cooled-down) checkpoints only (keep rows with is_final, or RunTable.drop_early_checkpoints)"
    )


def groups_of(runs: RunTable, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The arrays a hierarchical model needs besides the inputs and losses.

    ``family`` and ``run``: integer codes per row (:meth:`RunTable.run_ids`); ``centring``: per
    family and varying coordinate, lambda (0 here, non-centred, until :func:`choose_centring`
    measures it); ``run_rows``: rows per run; ``run_effect``: 1.0 if some run has
    several rows, else 0.0.
    """
    family = runs.family_codes()
    run = runs.run_ids()
    rows = np.bincount(run).astype(float)
    return {
        "family": family.astype(np.int32),
        "run": run.astype(np.int32),
        "centring": np.zeros((len(runs.families), len(layout_of(spec).varying))),
        "run_rows": rows,
        "run_effect": np.asarray(float(rows.max() > 1)),
    }


class NonCentredStart:
    """Where chains of a hierarchical model start (the ``start`` of :class:`bayescale.engine.Sampler`).

    With a coordinate (partly) centred in several families the joint density has no mode (it
    grows without bound as tau goes to 0 with those families at mu), so chains optimise
    with every family non-centred, where a mode exists, and then move to the partly
    centred values of the same point.
    """

    def __init__(self, layout: Layout, noise_scales: dict[str, float]):
        self.layout = layout
        self.noise_scales = noise_scales

    def initial(self, latent: dict) -> dict:
        """Where a chain's optimiser starts, from a uniform(-2, 2) draw of every unconstrained value.

        The noise scales start near their priors' scales (log scale +- 0.5) instead of at
        e^-2 to e^2 (0.14-7.4, ten or more times a seed spread): from there, one optimiser in 4
        on the 12-family workload (world 0) settled where run offsets absorb the law's trend in
        size (sigma_run 0.10 against 0.01 in truth), a local mode NUTS never left (R-hat 1.53).
        """
        return {**latent, **{name: jnp.log(scale) + 0.25 * latent[name] for name, scale in self.noise_scales.items()}}

    def args(self, args: tuple) -> tuple:
        """The model's arguments with every family non-centred."""
        x, log_loss, groups, *rest = args
        return (x, log_loss, {**groups, "centring": jnp.zeros_like(groups["centring"])}, *rest)

    def convert(self, latent: dict, args: tuple) -> dict:
        """Unconstrained values of the non-centred model -> those of the model with ``args``."""
        layout = self.layout
        if len(layout.varying) == 0:
            return latent
        tau = jnp.exp(latent["tau"]) if len(layout.pooled) else None  # tau's unconstrained value is log tau
        mean, spread = latent["mu"][layout.varying][None, :], spreads(layout, tau)[None, :]
        lam = args[2]["centring"]
        # u = mu + tau z (non-centred) = mu + tau^(1 - lambda) (raw - lambda mu)
        raw = latent["family_raw"] * spread**lam + lam * mean
        return {**latent, "family_raw": raw}


def choose_centring(sampler, args: tuple, site: str = "family_raw") -> np.ndarray:
    """lambda of each family coordinate, shape (F, Kv): the share of its precision due to the data.

    ``site`` names the offsets, shape (groups, coordinates): ``family_raw`` here, ``task_raw``
    for the tasks of :mod:`bayescale.downstream`.

    At the non-centred posterior mode an offset ``z`` (prior variance 1) has, given the
    population (mu, tau) and the other families, a Laplace posterior variance
    ``v = s^2 / (tau^2 + s^2)``, so ``lambda = tau^2 / (tau^2 + s^2) = 1 - v``. Marginal over
    the family's other coordinates, because its terms and exponents trade off: a coordinate
    can be sharply curved with the others held fixed and still loosely pinned.
    """
    _, hessian, positions = sampler.laplace(args)
    blocks = positions[site]  # (F, Kv) positions in the flat vector
    variance = np.stack([np.diag(_inverse(hessian[np.ix_(rows, rows)])) for rows in blocks])
    return np.clip(1.0 - variance, 0.0, 1.0)


def _inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric matrix with eigenvalues floored (a Hessian off the mode).

    A block with non-finite curvature (an optimiser stopped where the law overflows) says
    nothing about the data: its inverse is the prior's (identity), i.e. lambda = 0, non-centred.
    """
    if not np.all(np.isfinite(matrix)):
        return np.eye(len(matrix))
    values, vectors = np.linalg.eigh(0.5 * (matrix + matrix.T))
    return (vectors / np.clip(values, 1e-6, None)) @ vectors.T


def population_draws(spec: ModelSpec, posterior, family: int | None, rng: np.random.Generator | None = None) -> dict:
    """Coordinates -> the law's parameters for one fitted family, or for a new one.

    Parameters
    ----------
    posterior
        Mapping of ``mu`` (S, K), ``tau`` (S, Kp), ``family_raw`` (S, F, Kv) and ``centring`` (F, Kv).
    family
        Index of a fitted family, or ``None`` for a family not in the data, whose coordinates
        are drawn from the population (pooled: Normal(mu, tau); fixed: Normal(mu, scale);
        shared: mu) with ``rng``.

    Returns
    -------
    dict
        The law's parameters, each of shape (S,).
    """
    if family is not None:
        return {name: value[:, family] for name, value in family_parameters(spec, posterior).items()}
    layout = layout_of(spec)
    # A new family: its coordinates drawn from the population, i.e. non-centred offsets.
    offsets = rng.standard_normal((np.shape(posterior["mu"])[0], 1, len(layout.varying)))
    new = {**posterior, "family_raw": offsets, "centring": np.zeros((1, len(layout.varying)))}
    return {name: value[:, 0] for name, value in family_parameters(spec, new).items()}


def family_parameters(spec: ModelSpec, posterior) -> dict[str, np.ndarray]:
    """Every family's law parameters, each of shape ``(S, F)``, from draws as in :func:`population_draws`."""
    layout = layout_of(spec)
    mu = jnp.asarray(posterior["mu"])
    if len(layout.varying) == 0:
        u = jnp.broadcast_to(mu[:, None, :], (mu.shape[0], np.shape(posterior["centring"])[0], mu.shape[1]))
    else:
        tau = jnp.asarray(posterior["tau"]) if len(layout.pooled) else jnp.zeros((mu.shape[0], 0))
        centring = jnp.asarray(posterior["centring"])
        u = jax.vmap(lambda m, t, r: family_coordinates(layout, m, t, r, centring)[0])(mu, tau, jnp.asarray(posterior["family_raw"]))
    theta, _ = to_parameters(spec.law, {name: u[..., k] for k, name in enumerate(layout.names)})
    return {name: np.asarray(value) for name, value in theta.items()}


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
