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


def diagnose(idata, var_names: list[str]) -> Diagnostics:
    """Compute :class:`Diagnostics` for the sampled parameters ``var_names`` of ``idata``."""
    posterior = idata.posterior[var_names]
    num_chains = posterior.sizes["chain"]
    num_samples = posterior.sizes["draw"]
    divergences = int(idata.sample_stats["diverging"].sum())
    ess_bulk = float(az.ess(posterior, method="bulk").to_array().min())
    ess_tail = float(az.ess(posterior, method="tail").to_array().min())
    r_hat = float(az.rhat(posterior).to_array().max()) if num_chains > 1 else float("nan")
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
