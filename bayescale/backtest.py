"""Backtests: fit on the runs a team had earlier, predict the runs it trained later, score.

"Would this have been right?" is the question to ask of any extrapolation before trusting
it. A backtest refits the card on part of the data and predicts every held-out observation
with the posterior predictive distribution of a *new observation* (law plus observation
noise). Two ways of choosing the part:

* **compute cutoff** (``cutoff_flops``): fit everything below it, predict the rest;
* **leave one family out** (``family`` and ``keep_sizes``): keep only that family's
  ``keep_sizes`` smallest model sizes, and every other family whole; predict the family's
  larger sizes. With a hierarchical card this measures how much the family borrows from
  the others; with a single-family card on that family's rows alone, what it knows alone.

It reports, per held-out row and summarised overall and per family:

* the absolute relative error of the predictive median (for downstream accuracies, the
  absolute error in accuracy points: a relative error of an accuracy near zero means little);
* whether the 50%, 90% and 95% central intervals cover the observed loss (calibration:
  over many rows, coverage should be near the nominal level);
* the continuous ranked probability score (CRPS, Gneiting & Raftery 2007, eq. 21), estimated
  from the predictive draws as ``E|X - y| - E|X - X'| / 2``: lower is better, in nats;
* the 95% interval's width relative to the median.

Each row also carries ``params_ratio`` and ``flops_ratio``: its size and compute over the
largest fitted size and compute of its family, i.e. how far it extrapolates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .data import DataError, RunTable
from .downstream import DownstreamFit
from .fit import Fit, fit
from .hierarchy import NEW_FAMILY
from .predict import QUANTILES
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
        ``rel_width_95`` (downstream fits: ``task``, ``abs_error`` and ``width_95``, in
        accuracy points).
    fit
        The fit made on the kept observations.
    held_out
        Which observations were held out, in words (the cutoff, or the family and its kept sizes).
    """

    rows: pd.DataFrame
    fit: Fit
    held_out: str

    def summary(self) -> pd.DataFrame:
        """Scores overall (``family == "all"``) and per family.

        Returns
        -------
        pandas.DataFrame
            Columns ``family, n, median_abs_rel_error, coverage_50, coverage_90, coverage_95,
            mean_crps, mean_rel_width_95`` (downstream fits: ``mean_abs_error`` and
            ``mean_width_95`` in accuracy points instead of the relative measures).
        """
        groups = [("all", self.rows)] + ([(name, part) for name, part in self.rows.groupby("family")] if self.rows["family"].nunique() > 1 else [])
        return pd.DataFrame([_score(name, part) for name, part in groups])


def _score(name: str, rows: pd.DataFrame) -> dict:
    scores = {"family": name, "n": len(rows)}
    if "abs_rel_error" in rows:
        scores["median_abs_rel_error"] = float(rows["abs_rel_error"].median())
    else:  # accuracies: errors in accuracy points, not relative to a fraction near zero
        scores["mean_abs_error"] = float(rows["abs_error"].mean())
    scores.update({f"coverage_{level}": float(rows[f"covered_{level}"].mean()) for level, _, _ in INTERVALS})
    scores["mean_crps"] = float(rows["crps"].mean())
    if "rel_width_95" in rows:
        scores["mean_rel_width_95"] = float(rows["rel_width_95"].mean())
    else:
        scores["mean_width_95"] = float(rows["width_95"].mean())
    return scores


def _kept_rows(data: pd.DataFrame, cutoff_flops: float | None, family: str | None, keep_sizes: int) -> tuple[np.ndarray, str]:
    """Which rows are fitted, and a description of what is held out."""
    if (cutoff_flops is None) == (family is None):
        raise DataError("give either cutoff_flops (hold out everything above a compute) or family (hold out a family's larger sizes), not both or neither")
    if cutoff_flops is not None:
        kept = data["flops"].to_numpy() < cutoff_flops
        low, high = data["flops"].min(), data["flops"].max()
        if not kept.any():
            raise DataError(
                f"no observation has flops below the cutoff {cutoff_flops:.3g} (the data span {low:.3g} to "
                f"{high:.3g}); raise the cutoff so that there is something to fit"
            )
        if kept.all():
            raise DataError(
                f"every observation has flops below the cutoff {cutoff_flops:.3g} (the data span {low:.3g} to "
                f"{high:.3g}); lower the cutoff so that there is something to predict"
            )
        return kept, f"flops >= {cutoff_flops:.3g}"
    families = sorted(data["family"].unique())
    if family not in families:
        raise DataError(f"family {family!r} is not in the data (families: {families}); give one of those")
    if keep_sizes < 1:
        raise DataError(f"keep_sizes is {keep_sizes}; keep at least one size of family {family!r} (2 or more identify more)")
    member = (data["family"] == family).to_numpy()
    sizes = np.sort(data.loc[member, "params"].unique())
    if len(sizes) <= keep_sizes:
        raise DataError(
            f"family {family!r} has {len(sizes)} model sizes, so keeping {keep_sizes} leaves nothing to predict; "
            f"lower keep_sizes below {len(sizes)}"
        )
    kept = ~member | (data["params"].to_numpy() <= sizes[keep_sizes - 1])
    return kept, f"family {family!r} above its {keep_sizes} smallest sizes (params > {sizes[keep_sizes - 1]:.3g})"


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
    cutoff_flops: float | None = None,
    family: str | None = None,
    keep_sizes: int = 2,
    seed: int = 0,
    **fit_options,
) -> Backtest:
    """Fit on part of the runs and score predictions of the rest.

    Parameters
    ----------
    runs
        All observations (a :class:`~bayescale.RunTable` or a DataFrame).
    model
        The card to fit (name, path or :class:`~bayescale.ModelSpec`).
    cutoff_flops
        Compute cutoff: observations with ``flops < cutoff_flops`` are fitted; the others are
        predicted.
    family, keep_sizes
        Leave-one-family-out instead of a cutoff: fit every other family whole and this
        family's ``keep_sizes`` smallest model sizes (all their rows, checkpoints included);
        predict its larger sizes.
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
        If both or neither of ``cutoff_flops`` and ``family`` are given, the split leaves
        nothing to fit or nothing to predict, a held-out family has nothing fitted and the card
        is not hierarchical (a hierarchical card predicts it as a new family), or the fitted
        part cannot identify the card's law.

    Examples
    --------
    >>> pooled = backtest(runs, "chinchilla-hierarchical", family="small-lr", keep_sizes=2)  # doctest: +SKIP
    >>> alone = backtest(runs.data[runs.data.family == "small-lr"], "chinchilla", family="small-lr")  # doctest: +SKIP
    """
    if not isinstance(runs, RunTable):
        runs = RunTable(runs)
    data = runs.data
    kept, held_out = _kept_rows(data, cutoff_flops, family, keep_sizes)
    fitted = fit(runs.subset(np.asarray(kept), source=f"{runs.source} without {held_out}"), model, seed=seed, **fit_options)
    unseen = sorted(set(data.loc[~kept, "family"]) - set(fitted.families))
    if unseen and not isinstance(fitted, DownstreamFit) and not fitted.spec.hierarchical:
        raise DataError(
            f"families {unseen} have no fitted observation, and card {fitted.spec.name!r} cannot "
            "predict a family it has not seen; lower the cutoff, drop those families, or use a "
            "hierarchical card (which predicts them as new families drawn from the population)"
        )
    if isinstance(fitted, DownstreamFit):
        return Backtest(rows=_accuracy_rows(fitted, data[~kept], seed), fit=fitted, held_out=held_out)
    largest = data[kept].groupby("family")[["params", "flops"]].max().reindex(sorted(set(data["family"])))
    frames = []
    for name, part in data[~kept].groupby("family", sort=False):
        inputs = {column: part[column].to_numpy(dtype=float) for column in fitted.spec.law.inputs}
        # A family with nothing fitted is, to a hierarchical card, a new draw from the population.
        as_family = name if name in fitted.families else NEW_FAMILY
        table = fitted.predict(**inputs, family=as_family, noise=True, draws=True, seed=seed)
        table["family"] = name
        observed = part["loss"].to_numpy(dtype=float)
        table["params_ratio"] = part["params"].to_numpy(dtype=float) / largest.loc[name, "params"]
        table["flops_ratio"] = part["flops"].to_numpy(dtype=float) / largest.loc[name, "flops"]
        table["observed"] = observed
        table["abs_rel_error"] = np.abs(table["q50"] / observed - 1.0)
        for level, lower, upper in INTERVALS:
            table[f"covered_{level}"] = (table[lower] <= observed) & (observed <= table[upper])
        table["crps"] = [crps_from_draws(d, y) for d, y in zip(table["draws"], observed)]
        table["rel_width_95"] = (table["q97.5"] - table["q2.5"]) / table["q50"]
        frames.append(table.drop(columns="draws"))
    return Backtest(rows=pd.concat(frames, ignore_index=True), fit=fitted, held_out=held_out)


def _accuracy_rows(fitted: DownstreamFit, held: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Score a downstream fit's predictions of held-out evaluations (accuracy an evaluation on
    the row's own ``n_items`` would observe); errors are in accuracy points."""
    unseen = sorted(set(held["task"].astype(str)) - set(fitted.tasks))
    if unseen:
        raise DataError(
            f"tasks {unseen[:6]} have no fitted evaluation, so their rise cannot be predicted; lower the "
            "cutoff or drop those tasks"
        )
    if "correct" in held and "n_items" in held:
        held = held.assign(accuracy=held["correct"] / held["n_items"])
    fitted_flops = fitted.observed().groupby("family")["flops"].max()
    frames = []
    keys = ["family", "task"] + (["n_items"] if "n_items" in held else [])
    for key, part in held.groupby(keys, sort=False):
        family, task = str(key[0]), str(key[1])
        as_family = family if family in fitted.families else NEW_FAMILY
        n_items = key[2] if len(key) > 2 else None
        values = fitted.accuracy_draws(part["flops"].to_numpy(dtype=float), task, as_family, noise=True, n_items=n_items, seed=seed)
        table = pd.DataFrame({"flops": part["flops"].to_numpy(dtype=float), "task": task, "family": family, "quantity": "accuracy", "mean": values.mean(axis=0)})
        for label, q in QUANTILES.items():
            table[label] = np.quantile(values, q, axis=0)
        observed = part["accuracy"].to_numpy(dtype=float)
        table["flops_ratio"] = table["flops"] / fitted_flops.get(family, np.nan)
        table["observed"] = observed
        table["abs_error"] = np.abs(table["q50"] - observed)
        for level, lower, upper in INTERVALS:
            table[f"covered_{level}"] = (table[lower] <= observed) & (observed <= table[upper])
        table["crps"] = [crps_from_draws(values[:, j], y) for j, y in enumerate(observed)]
        table["width_95"] = table["q97.5"] - table["q2.5"]
        frames.append(table)
    return pd.concat(frames, ignore_index=True)
