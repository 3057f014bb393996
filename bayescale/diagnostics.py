"""Sampler diagnostics with advice: R-hat, bulk/tail ESS, divergences, E-BFMI, and the
Pareto shape of an independence sampler's proposal.

Thresholds follow Vehtari et al. (2021), "Rank-normalization, folding, and
localization: An improved R-hat", sec. 4: R-hat < 1.01 and ESS > 400 (100 per
chain for 4 chains); for the Pareto shape, Vehtari et al. (2024), "Pareto smoothed
importance sampling", JMLR 25: k < 0.7.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import special, stats
from scipy.fftpack import next_fast_len  # arviz's choice of FFT length, for identical values

from ._arviz import az
from .independence import MAX_PARETO_K

MAX_R_HAT = 1.01
MIN_ESS = 400
#: E-BFMI below 0.3 signals a posterior the momentum resampling cannot explore (Betancourt 2016).
MIN_BFMI = 0.3


class SamplerWarning(UserWarning):
    """The sampler did not converge well enough to trust the posterior without a second look."""


class ModelWarning(UserWarning):
    """The sampler converged, but the fitted model describes the data in an implausible way."""


@dataclass(frozen=True)
class Diagnostics:
    """Convergence summary of a fit.

    Attributes
    ----------
    divergences
        Number of divergent transitions after warm-up.
    max_r_hat
        Largest rank-normalised split R-hat over sampled parameters (NaN with one chain).
    min_ess_bulk, min_ess_tail
        Smallest bulk and tail effective sample sizes.
    min_bfmi
        Smallest per-chain E-BFMI.
    num_chains, num_samples
        Chains and draws per chain.
    pareto_k
        Independence sampling only (``idata.attrs["sampler"]``): the Pareto shape of its
        proposal's importance ratios; NaN for NUTS.
    problems
        Plain-language descriptions of each problem, with what to try.
    """

    divergences: int
    max_r_hat: float
    min_ess_bulk: float
    min_ess_tail: float
    min_bfmi: float
    num_chains: int
    num_samples: int
    pareto_k: float = float("nan")
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def to_dict(self) -> dict:
        """JSON-ready summary (the ``diagnostics`` block of ``bayescale summary --format json``)."""
        return {
            "divergences": self.divergences,
            "max_r_hat": _json_float(self.max_r_hat),
            "min_ess_bulk": _json_float(self.min_ess_bulk),
            "min_ess_tail": _json_float(self.min_ess_tail),
            "min_bfmi": _json_float(self.min_bfmi),
            "num_chains": self.num_chains,
            "num_samples": self.num_samples,
            "pareto_k": _json_float(self.pareto_k),
            "problems": list(self.problems),
        }

    def warn(self) -> None:
        """Issue one :class:`SamplerWarning` per problem."""
        for problem in self.problems:
            warnings.warn(problem, SamplerWarning, stacklevel=3)


def _json_float(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def higher_target_accept(used: float | None) -> float:
    """The target acceptance rate to suggest after divergences: halfway from the one used to 1
    (smaller steps; 0.95 where the fit does not say what it used)."""
    if used is None:
        return 0.95
    return float(round(1.0 - (1.0 - float(used)) / 2.0, 4))


def convergence(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank-normalised split R-hat and bulk and tail effective sample sizes of many scalars at once.

    The same estimators as arviz's ``rhat`` (``method="rank"``) and ``ess`` (``"bulk"``,
    ``"tail"``) (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021, "Rank-normalization,
    folding, and localization: An improved R-hat", Bayesian Analysis 16, eqs. 4-11, with
    Geyer's initial monotone sequence for the autocorrelations), vectorised over every leading
    axis. arviz computes one scalar per call, through xarray: checking the 4 scalars of one
    downstream task (4 x 1,000 draws) took 19 ms, against 7 ms in all with this, most of it sorting.
    ``tests/test_diagnostics.py`` checks the values against arviz's.

    Parameters
    ----------
    draws
        Shape ``(..., chain, draw)``.

    Returns
    -------
    (r_hat, ess_bulk, ess_tail)
        Arrays of the leading shape; R-hat is NaN with one chain, all three are NaN where a
        scalar has a non-finite draw or fewer than 4 draws per chain.
    """
    draws = np.asarray(draws, dtype=float)
    *lead, chains, length = draws.shape
    flat = draws.reshape(-1, chains, length)
    valid = np.all(np.isfinite(flat), axis=(1, 2)) & (length >= 4)
    flat = np.where(valid[:, None, None], flat, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):  # a constant scalar's R-hat is 0/0: NaN, as arviz's
        return _convergence(flat, chains, valid, lead)


def _convergence(flat, chains, valid, lead):
    split = _split_chains(flat)
    folded = np.abs(split - np.median(split, axis=(1, 2), keepdims=True))
    z = _z_scale(split)  # sorting is most of the cost: bulk R-hat and bulk ESS share these scores
    r_hat = np.maximum(_r_hat(z), _r_hat(_z_scale(folded)))
    if chains < 2:
        r_hat = np.full_like(r_hat, np.nan)
    ess_bulk = _ess(z)
    # Tail ESS: the smaller ESS of the indicators of the 5% and 95% quantiles (type 7, as arviz).
    quantiles = np.quantile(flat.reshape(len(flat), -1), [0.05, 0.95], axis=1)
    ess_tail = np.minimum(*(_ess(_split_chains((flat <= q[:, None, None]).astype(float))) for q in quantiles))
    invalid = lambda values: np.where(valid, values, np.nan).reshape(lead)  # noqa: E731
    return invalid(r_hat), invalid(ess_bulk), invalid(ess_tail)


def _split_chains(draws):
    """Each chain's first and last halves as separate chains: ``(K, C, N) -> (K, 2C, N // 2)``."""
    half = draws.shape[-1] // 2
    return np.concatenate([draws[..., :half], draws[..., -half:]], axis=1)


def _z_scale(draws):
    """Normal scores of the ranks of each scalar's draws, pooled over chains (Blom's offset 3/8)."""
    count, chains, length = draws.shape
    rank = stats.rankdata(draws.reshape(count, -1), method="average", axis=1)
    return special.ndtri((rank - 0.375) / (chains * length + 0.25)).reshape(draws.shape)


def _r_hat(draws):
    """Potential scale reduction of ``(K, C, N)`` chains (Gelman-Rubin, on split chains)."""
    length = draws.shape[-1]
    between = length * np.var(np.mean(draws, axis=-1), axis=-1, ddof=1)
    within = np.mean(np.var(draws, axis=-1, ddof=1), axis=-1)
    return np.sqrt((between / within + length - 1) / length)


def _ess(draws):
    """Effective sample size of ``(K, C, N)`` chains: autocorrelations by FFT, summed in pairs up
    to the first non-positive pair (Geyer's initial positive sequence), each pair capped by the
    ones before it (his initial monotone sequence); the sequential loops of arviz's ``_ess``,
    written as cumulative operations."""
    count, chains, length = draws.shape
    centred = draws - draws.mean(axis=-1, keepdims=True)
    size = next_fast_len(2 * length)
    spectrum = np.fft.rfft(centred, n=size, axis=-1)
    autocovariance = np.fft.irfft(spectrum * np.conjugate(spectrum), n=size, axis=-1)[..., :length] / length
    mean_var = autocovariance[:, :, 0].mean(axis=1) * length / (length - 1.0)
    var_plus = mean_var * (length - 1.0) / length
    if chains > 1:
        var_plus = var_plus + np.var(draws.mean(axis=-1), axis=1, ddof=1)
    rho = 1.0 - (mean_var[:, None] - autocovariance.mean(axis=1)) / var_plus[:, None]
    rho[:, 0] = 1.0
    # Pairs P_k = rho_2k + rho_2k+1. arviz's loop computes P_1 ... P_last (while 2k - 1 < N - 3)
    # and stops at the first P_K <= 0; K is ``last`` when none is.
    last = len(range(1, length - 3, 2))
    pairs = rho[:, 0 : 2 * last + 1 : 2] + rho[:, 1 : 2 * last + 2 : 2]  # P_0 ... P_last
    stopped = pairs[:, 1:] <= 0
    stop = np.where(stopped.any(axis=1), np.argmax(stopped, axis=1) + 1, last) if last else np.zeros(count, int)
    monotone = np.minimum.accumulate(pairs, axis=1)
    before = np.sum(np.where(np.arange(pairs.shape[1])[None, :] < stop[:, None], monotone, 0.0), axis=1)
    # rho_2K counts in full where P_K was kept (P_K >= 0) or rho_2K > 0 ("improve estimation").
    rho_stop = rho[np.arange(count), 2 * stop]
    kept = (pairs[np.arange(count), stop] >= 0) | (rho_stop > 0)
    tau = -1.0 + 2.0 * before + np.where(kept, rho_stop, 0.0)
    total = chains * length
    tau = np.maximum(tau, 1.0 / np.log10(total))
    constant = (draws.max(axis=(1, 2)) - draws.min(axis=(1, 2))) < np.finfo(float).resolution
    ess = np.where(constant, float(total), total / tau)
    return np.where(np.any(np.isnan(rho), axis=1) & ~constant, np.nan, ess)


def _extreme(values: np.ndarray, pick) -> float:
    """``pick`` (min or max) over the values that are not NaN (a constant scalar's R-hat is), NaN
    if none is: as xarray's reductions, which these checks used before."""
    values = values[~np.isnan(values)]
    return float(pick(values)) if values.size else float("nan")


def diagnose(idata, var_names: list[str]) -> Diagnostics:
    """Compute :class:`Diagnostics` for the sampled parameters ``var_names`` of ``idata``."""
    posterior = idata.posterior[var_names]
    num_chains = posterior.sizes["chain"]
    num_samples = posterior.sizes["draw"]
    divergences = int(idata.sample_stats["diverging"].sum())
    scalars = np.concatenate([posterior[name].values.reshape(num_chains, num_samples, -1) for name in var_names], axis=-1)
    r_hats, ess_bulks, ess_tails = convergence(np.moveaxis(scalars, -1, 0))
    ess_bulk, ess_tail, r_hat = _extreme(ess_bulks, np.min), _extreme(ess_tails, np.min), _extreme(r_hats, np.max)
    bfmi = float(np.min(az.bfmi(idata))) if "energy" in idata.sample_stats else float("nan")
    pareto_k = float(idata.attrs.get("pareto_k", np.nan))

    problems = []
    if divergences:
        higher = higher_target_accept(idata.attrs.get("target_accept"))
        problems.append(
            f"{divergences} divergent transitions after warm-up: the posterior has regions the sampler "
            f"cannot follow, so its tails may be wrong. Try target_accept={higher} (CLI --target-accept {higher}); "
            "if they persist, the data may not identify every parameter: use a card with fewer free "
            "parameters or add runs that vary the size the law cannot pin down."
        )
    if num_chains == 1:
        problems.append("a single chain cannot show non-convergence (R-hat needs 2 or more); use num_chains=4.")
    elif not r_hat < MAX_R_HAT:
        problems.append(
            f"R-hat {r_hat:.3f} > {MAX_R_HAT}: the chains disagree, so the posterior is not yet trustworthy. "
            "Try more warm-up (num_warmup=2000); if it persists the posterior may be multimodal: "
            "check the data for a size range too narrow to separate the terms."
        )
    if not min(ess_bulk, ess_tail) >= MIN_ESS:
        problems.append(
            f"effective sample size {min(ess_bulk, ess_tail):.0f} < {MIN_ESS}: intervals are noisy. "
            "Draw more samples (num_samples=2000) or more chains."
        )
    if np.isfinite(bfmi) and bfmi < MIN_BFMI:
        problems.append(
            f"E-BFMI {bfmi:.2f} < {MIN_BFMI}: the sampler explores the posterior's energy poorly; "
            "a reparameterisation or tighter priors may help."
        )
    if "pareto_k" in idata.attrs and not pareto_k < MAX_PARETO_K:
        problems.append(
            f"Pareto k {pareto_k:.2f} >= {MAX_PARETO_K}: the independence sampler's proposal under-weights part of "
            "the posterior, so its draws may too; refit with NUTS (sampler=\"nuts\")."
        )
    return Diagnostics(
        divergences, r_hat, ess_bulk, ess_tail, bfmi, num_chains, num_samples, pareto_k=pareto_k, problems=tuple(problems)
    )
