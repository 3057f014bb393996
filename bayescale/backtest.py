"""Backtests: fit below a compute cutoff, predict the runs above it, score the predictions.

"Would this have been right?" is the question to ask of any extrapolation before trusting
it. A backtest refits the card on the observations a team had at some earlier point (those
below ``cutoff_flops``), predicts every held-out observation with the posterior predictive
distribution of a *new observation* (law plus observation noise), and reports, per held-out
row and summarised overall and per family:

* the absolute relative error of the predictive median;
* whether the 50%, 90% and 95% central intervals cover the observed loss (calibration:
  over many rows, coverage should be near the nominal level);
* the continuous ranked probability score (CRPS, Gneiting & Raftery 2007, eq. 21), estimated
  from the predictive draws as ``E|X - y| - E|X - X'| / 2``: lower is better, in nats;
* the 95% interval's width relative to the median.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .data import DataError, RunTable
from .fit import Fit, fit
from .spec import ModelSpec

#: Central intervals scored, as (label, lower quantile column, upper quantile column).
INTERVALS = (("50", "q25", "q75"), ("90", "q5", "q95"), ("95", "q2.5", "q97.5"))


@dataclass(frozen=True)
class Backtest:
    """The result of :func:`backtest`.

    Attributes
    ----------
    rows
        One row per held-out observation: its inputs and family, ``observed``, the
        predictive quantiles, ``abs_rel_error``, ``covered_50/90/95``, ``crps`` and
        ``rel_width_95``.
    fit
        The fit made on the observations below the cutoff.
    cutoff_flops
        The compute cutoff (observations with ``flops < cutoff_flops`` were fitted).
    """

    rows: pd.DataFrame
    fit: Fit
    cutoff_flops: float

    def summary(self) -> pd.DataFrame:
        """Scores overall (``family == "all"``) and per family.

        Returns
        -------
        pandas.DataFrame
            Columns ``family, n, median_abs_rel_error, coverage_50, coverage_90, coverage_95,
            mean_crps, mean_rel_width_95``.
        """
        groups = [("all", self.rows)] + ([(name, part) for name, part in self.rows.groupby("family")] if self.rows["family"].nunique() > 1 else [])
        return pd.DataFrame([_score(name, part) for name, part in groups])


def _score(name: str, rows: pd.DataFrame) -> dict:
    scores = {"family": name, "n": len(rows), "median_abs_rel_error": float(rows["abs_rel_error"].median())}
    scores.update({f"coverage_{level}": float(rows[f"covered_{level}"].mean()) for level, _, _ in INTERVALS})
    scores["mean_crps"] = float(rows["crps"].mean())
    scores["mean_rel_width_95"] = float(rows["rel_width_95"].mean())
    return scores


def crps_from_draws(draws: np.ndarray, observed: float) -> float:
    """CRPS of a predictive distribution given by ``draws`` at the observed value.

    Uses the sorted-sample form of ``E|X - X'|`` (O(S log S), no S x S matrix).
    """
    x = np.sort(np.asarray(draws, dtype=float))
    s = x.size
    spread = 2.0 * np.sum((2.0 * np.arange(1, s + 1) - s - 1) * x) / (s * s)  # E|X - X'|
    return float(np.mean(np.abs(x - observed)) - 0.5 * spread)


def backtest(
    runs: RunTable | pd.DataFrame,
    model: str | Path | ModelSpec = "chinchilla",
    *,
    cutoff_flops: float,
    seed: int = 0,
    **fit_options,
) -> Backtest:
    """Fit on observations below a compute cutoff and score predictions of the rest.

    Parameters
    ----------
    runs
        All observations (a :class:`~bayescale.RunTable` or a DataFrame).
    model
        The card to fit (name, path or :class:`~bayescale.ModelSpec`).
    cutoff_flops
        Observations with ``flops < cutoff_flops`` are fitted; the others are predicted.
    seed
        Seed of the fit and of the predictive noise draws.
    **fit_options
        Passed to :func:`bayescale.fit` (``num_warmup``, ``num_samples``, ...).

    Returns
    -------
    Backtest

    Raises
    ------
    bayescale.DataError
        If the cutoff leaves nothing to fit or nothing to predict, or the fitted part
        cannot identify the card's law.
    """
    if not isinstance(runs, RunTable):
        runs = RunTable(runs)
    data = runs.data
    below = data["flops"].to_numpy() < cutoff_flops
    low, high = data["flops"].min(), data["flops"].max()
    if not below.any():
        raise DataError(
            f"no observation has flops below the cutoff {cutoff_flops:.3g} (the data span {low:.3g} to "
            f"{high:.3g}); raise the cutoff so that there is something to fit"
        )
    if below.all():
        raise DataError(
            f"every observation has flops below the cutoff {cutoff_flops:.3g} (the data span {low:.3g} to "
            f"{high:.3g}); lower the cutoff so that there is something to predict"
        )
    fitted = fit(RunTable(data[below], source=f"{runs.source} below {cutoff_flops:.3g} FLOP"), model, seed=seed, **fit_options)
    held_out = data[~below]
    known = set(fitted.families)
    unseen = sorted(set(held_out["family"]) - known)
    if unseen:
        raise DataError(
            f"families {unseen} have no observation below the cutoff, and card {fitted.spec.name!r} cannot "
            "predict a family it has not seen; lower the cutoff or drop those families"
        )
    frames = []
    for family, part in held_out.groupby("family", sort=False):
        inputs = {name: part[name].to_numpy(dtype=float) for name in fitted.spec.law.inputs}
        table = fitted.predict(**inputs, family=family, noise=True, draws=True, seed=seed)
        observed = part["loss"].to_numpy(dtype=float)
        table["observed"] = observed
        table["abs_rel_error"] = np.abs(table["q50"] / observed - 1.0)
        for level, lower, upper in INTERVALS:
            table[f"covered_{level}"] = (table[lower] <= observed) & (observed <= table[upper])
        table["crps"] = [crps_from_draws(d, y) for d, y in zip(table["draws"], observed)]
        table["rel_width_95"] = (table["q97.5"] - table["q2.5"]) / table["q50"]
        frames.append(table.drop(columns="draws"))
    return Backtest(rows=pd.concat(frames, ignore_index=True), fit=fitted, cutoff_flops=float(cutoff_flops))
