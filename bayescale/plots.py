"""Figures of a fit. The only module that imports matplotlib.

Every function takes a :class:`~bayescale.Fit` (the downstream ones a
:class:`~bayescale.DownstreamFit` or its emergence table), draws on the given axes
(or new ones) and returns the matplotlib Figure.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # file output only: no display is assumed (CI, servers)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from .hierarchy import NEW_FAMILY  # noqa: E402


def format_count(value: float, unit: str = "") -> str:
    """Readable scale labels: 7e10 -> "70B", 1.2e6 -> "1.2M", with an optional unit.

    Parameters
    ----------
    value
        A count (parameters, tokens).
    unit
        Appended to the label.

    Returns
    -------
    str
    """
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}{unit}"
    return f"{value:.3g}{unit}"


def format_flops(value: float, unit: str = " FLOP") -> str:
    """FLOP labels in powers of ten: 1e21 -> "1e21 FLOP" (``unit=""`` for crowded tick labels).

    Parameters
    ----------
    value
        Compute in FLOP (empty label for non-positive values).
    unit
        Appended to the label.

    Returns
    -------
    str
    """
    if value <= 0:
        return ""
    exponent = np.log10(value)
    if np.isclose(exponent, round(exponent)):
        return f"1e{round(exponent)}{unit}"
    return f"{value:.1e}{unit}"


def png_bytes(fig, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; the figure is closed (for reports that embed many figures).

    Parameters
    ----------
    fig
        A matplotlib Figure.
    dpi
        Resolution.

    Returns
    -------
    bytes
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def _axes(ax):
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    return ax.figure, ax


def _loss_against_compute(ax):
    """Log-log axes of loss (nats) against training compute (FLOP), with readable labels."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_flops(v, unit="")))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.set_xlabel("training compute (FLOP)")
    ax.set_ylabel("loss (nats)")


def _frontier_budgets(fit, flops):
    if flops is not None:
        return np.asarray(flops, dtype=float)
    observed = fit.observed()["flops"].to_numpy()
    return np.logspace(np.log10(observed.min()), np.log10(observed.max()) + 3, 40)


def plot_loss_frontier(fit, flops=None, ax=None):
    """Observed losses against compute, with the posterior loss of compute-optimal runs.

    The band is the 95% (light) and 50% (dark) posterior interval of the expected loss
    of a compute-optimally allocated run; observed runs should lie on or above it.
    For the compute power law the band is the law itself.

    Parameters
    ----------
    fit
        A loss fit.
    flops
        Budgets at which to draw the band; default from the smallest observed compute
        to 1000x the largest.
    ax
        Axes to draw on; new ones if omitted.
    """
    fig, ax = _axes(ax)
    budgets = _frontier_budgets(fit, flops)
    if fit.spec.law.optimal_fn is None:
        table = fit.predict(flops=budgets)
        label = "posterior loss"
    else:
        table = fit.optimal(budgets)
        table = table[table["quantity"] == "loss"]
        label = "loss of compute-optimal run"
    ax.fill_between(table["flops"], table["q2.5"], table["q97.5"], color="C0", alpha=0.25, lw=0, label=f"{label}, 95%")
    ax.fill_between(table["flops"], table["q25"], table["q75"], color="C0", alpha=0.5, lw=0, label="50%")
    ax.plot(table["flops"], table["q50"], color="C0", lw=1.5)
    observed = fit.observed()
    ax.scatter(observed["flops"], observed["loss"], s=10, color="k", alpha=0.7, label="observed runs", zorder=3)
    _loss_against_compute(ax)
    ax.set_title(f"{fit.spec.name}: data and posterior")
    ax.legend(frameon=False, fontsize="small")
    return fig


def plot_optimal_allocation(fit, flops=None, ax=None, *, family=None):
    """Compute-optimal parameters and tokens against compute, with 95% posterior bands.

    Observed runs are drawn at their (compute, parameters) and (compute, tokens).

    Parameters
    ----------
    fit
        A fit of a card with an N/D trade-off (Chinchilla, Kaplan).
    flops
        Budgets at which to draw the bands (default as :func:`plot_loss_frontier`).
    ax
        Axes to draw on; new ones if omitted.
    family
        The family of the bands (hierarchical fits: a fitted family, or ``"new"``).
    """
    fig, ax = _axes(ax)
    table = fit.optimal(_frontier_budgets(fit, flops), family=family)
    observed = fit.observed()
    for colour, quantity in (("C1", "params"), ("C2", "tokens")):
        rows = table[table["quantity"] == quantity]
        ax.fill_between(rows["flops"], rows["q2.5"], rows["q97.5"], color=colour, alpha=0.3, lw=0)
        ax.plot(rows["flops"], rows["q50"], color=colour, lw=1.5, label=f"optimal {quantity} (median, 95%)")
        ax.scatter(observed["flops"], observed[quantity], s=6, color=colour, alpha=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_flops(v, unit="")))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_count(v)))
    ax.set_xlabel("training compute (FLOP)")
    ax.set_ylabel("parameters / tokens")
    ax.set_title("compute-optimal allocation (dots: observed runs)")
    ax.legend(frameon=False, fontsize="small")
    return fig


def plot_families(fit, flops=None, ax=None, *, new_family: bool = True):
    """A pooled fit's families on one figure: each family's data and posterior band.

    For each family, its observed losses against compute and the 95% posterior interval of
    the expected loss along its compute-optimal frontier (for the compute power law, the law
    itself), in the family's colour; with ``new_family``, the band of a family not in the data
    (dashed), drawn from the population: what pooling predicts before a family's first run.

    Parameters
    ----------
    fit
        A fit of a hierarchical card.
    flops
        Budgets at which to draw the bands (default as :func:`plot_loss_frontier`).
    ax
        Axes to draw on; new ones if omitted.
    new_family
        Also draw the band of an unseen family.
    """
    if not fit.spec.hierarchical:
        raise ValueError(f"card {fit.spec.name!r} has no families to pool; use plot_loss_frontier")
    fig, ax = _axes(ax)
    budgets = _frontier_budgets(fit, flops)
    observed = fit.observed()

    def band(family):
        if fit.spec.law.optimal_fn is None:
            return fit.predict(flops=budgets, family=family)
        table = fit.optimal(budgets, family=family)
        return table[table["quantity"] == "loss"]

    for k, family in enumerate(fit.families):
        table, colour = band(family), f"C{k % 10}"
        ax.fill_between(table["flops"], table["q2.5"], table["q97.5"], color=colour, alpha=0.25, lw=0)
        ax.plot(table["flops"], table["q50"], color=colour, lw=1.2, label=family)
        rows = observed[observed["family"] == family]
        ax.scatter(rows["flops"], rows["loss"], s=6, color=colour, alpha=0.6, zorder=3)
    if new_family and NEW_FAMILY not in fit.families:  # a fitted family named "new" is that family
        table = band(NEW_FAMILY)
        ax.plot(table["flops"], table["q2.5"], color="0.4", ls="--", lw=1, label="a new family, 95%")
        ax.plot(table["flops"], table["q97.5"], color="0.4", ls="--", lw=1)
    _loss_against_compute(ax)
    ax.set_title("families: data and posterior (bands: 95%, compute-optimal runs)")
    ax.legend(frameon=False, fontsize="small", ncol=2)
    return fig


def plot_noise(fit, ax=None):
    """Posterior of a pooled fit's run-to-run (seed) spread and checkpoint noise, in percent of loss.

    Parameters
    ----------
    fit
        A fit of a hierarchical card.
    ax
        Axes to draw on; new ones if omitted.
    """
    if not fit.spec.hierarchical:
        raise ValueError(f"card {fit.spec.name!r} has no run effect; its noise is the summary's sigma")
    fig, ax = _axes(ax)
    draws = fit.draws(["sigma_run", "sigma"])
    for colour, name, label in (("C3", "sigma_run", "run-to-run (seed) spread"), ("C0", "sigma", "checkpoint noise")):
        ax.hist(100 * draws[name], bins=60, color=colour, alpha=0.6, density=True, label=label)
    ax.set_xlabel("standard deviation of log loss (%)")
    ax.set_ylabel("posterior density")
    ax.set_title("seed-to-seed spread and checkpoint noise")
    ax.legend(frameon=False, fontsize="small")
    return fig


def plot_design(design, ax=None):
    """Candidate runs in the (params, tokens) plane, coloured by expected information per FLOP,
    with the chosen batch ringed and numbered in the order chosen (and "(x3)" where a
    configuration is chosen for three runs). Candidates given by compute alone (an emergence
    target's models) are drawn along compute, at the information each would add alone.

    Parameters
    ----------
    design
        A :class:`~bayescale.design.Design` (from :func:`bayescale.suggest_runs`).
    ax
        Axes to draw on; new ones if omitted.
    """
    fig, ax = _axes(ax)
    table = design.candidates
    value = np.log10(np.clip(table["gain_per_flop"].to_numpy(dtype=float), 1e-300, None))
    by_compute = not {"params", "tokens"} <= set(table) or table[["params", "tokens"]].isna().any().any()
    x, y = ("flops", "expected_gain") if by_compute else ("params", "tokens")
    table = table.rename(columns={x: "_x", y: "_y"})
    points = ax.scatter(table["_x"], table["_y"], c=value, cmap="viridis", s=40)
    fig.colorbar(points, ax=ax, label="log10 information per FLOP")
    chosen = table[table["selected"]]
    ax.scatter(chosen["_x"], chosen["_y"], s=160, facecolors="none", edgecolors="C3", linewidths=1.5, label="chosen")
    for _, row in chosen.iterrows():  # when first chosen, and how many runs (seeds) if more than one
        label = str(int(row["order"])) + (f" (x{int(row['runs'])})" if row["runs"] > 1 else "")
        ax.annotate(label, (row["_x"], row["_y"]), textcoords="offset points", xytext=(6, 6), fontsize="small", color="C3")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_count(v)))
    if by_compute:
        ax.set_xlabel("training compute (FLOP)")
        ax.set_ylabel("expected information (nats), alone")
    else:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_count(v)))
        ax.set_xlabel("parameters")
        ax.set_ylabel("training tokens")
    ax.set_title(f"next runs for the {design.target}: 95% width {design.width_95_before:.3g} -> {design.width_95_after:.3g}", fontsize="small")
    ax.legend(frameon=False, fontsize="small")
    return fig


def plot_pairs(fit, *, families=None, max_draws: int = 1000, seed: int = 0):
    """Posterior pairs of the law's exponents (and its irreducible loss E, where it has one).

    The diagonal shows each parameter's marginal; below it, draws of each pair. Elongated
    clouds show what the data cannot separate (in Chinchilla-style fits, E trades off
    against the exponents). A pooled fit draws each family in its own colour.

    Parameters
    ----------
    fit
        A loss fit.
    families
        Families to draw (hierarchical fits; default every fitted family).
    max_draws
        Draws shown per family (a random subset, for legibility).
    seed
        Seed of the subset.
    """
    law = fit.spec.law
    names = [*law.exponents.values(), *(["e"] if "e" in law.parameters else [])]
    labels = {"e": "E (nats)"}
    families = list(fit.families if families is None else families) if fit.spec.hierarchical else [None]
    size = len(names)
    fig, axes = plt.subplots(size, size, figsize=(2.1 * size + 0.6, 2.1 * size), layout="constrained", squeeze=False)
    rng = np.random.default_rng(seed)
    for k, family in enumerate(families):
        theta = fit.parameter_draws(family)
        values = {name: np.exp(theta[name]) if name == "e" else np.asarray(theta[name]) for name in names}
        pick = rng.permutation(values[names[0]].size)[:max_draws]
        colour = f"C{k % 10}"
        for i, row in enumerate(names):
            for j, column in enumerate(names):
                ax = axes[i, j]
                if j > i:
                    ax.set_visible(False)
                elif i == j:
                    ax.hist(values[row], bins=40, density=True, color=colour, alpha=0.5, label=family)
                    ax.set_yticks([])
                else:
                    ax.scatter(values[column][pick], values[row][pick], s=3, color=colour, alpha=0.3, lw=0)
    for i, row in enumerate(names):
        axes[i, 0].set_ylabel(labels.get(row, row) if i > 0 else "density")
        axes[-1, i].set_xlabel(labels.get(row, row))
    if families != [None]:
        axes[0, 0].legend(frameon=False, fontsize="x-small")
    fig.suptitle("posterior pairs of the exponents", fontsize="small")
    return fig


def plot_backtest(backtest, ax=None):
    """A backtest's predictions against what was observed: the predictive median and 90%
    interval of each held-out observation, on the diagonal where the prediction was right.
    Intervals that missed are drawn in red; the title gives the coverage.

    Parameters
    ----------
    backtest
        A :class:`~bayescale.Backtest`.
    ax
        Axes to draw on; new ones if omitted.
    """
    fig, ax = _axes(ax)
    rows = backtest.rows
    missed = ~rows["covered_90"].to_numpy(dtype=bool)
    for mask, colour, label in ((~missed, "C0", "90% interval covers the observation"), (missed, "C3", "90% interval misses it")):
        part = rows[mask]
        if len(part):
            error = np.vstack([part["q50"] - part["q5"], part["q95"] - part["q50"]])
            ax.errorbar(part["observed"], part["q50"], yerr=error, fmt="o", ms=3, color=colour, elinewidth=1, alpha=0.7, label=label)
    low = float(min(rows["observed"].min(), rows["q5"].min()))
    high = float(max(rows["observed"].max(), rows["q95"].max()))
    ax.plot([low, high], [low, high], color="0.4", ls=":", lw=1)
    quantity = "accuracy" if "abs_error" in rows else "loss (nats)"
    ax.set_xlabel(f"observed {quantity}")
    ax.set_ylabel(f"predicted {quantity} (median, 90%)")
    ax.set_title(f"backtest, held out {backtest.held_out}: {int((~missed).sum())} of {len(rows)} inside the 90% interval", fontsize="small")
    ax.legend(frameon=False, fontsize="small")
    return fig


def plot_fit(fit, flops=None):
    """One figure with :func:`plot_loss_frontier` and, where the law allows, :func:`plot_optimal_allocation`.

    Parameters
    ----------
    fit
        A loss fit.
    flops
        Budgets at which to draw the bands (default as :func:`plot_loss_frontier`).
    """
    panels = 2 if fit.spec.law.optimal_fn is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 4.6), layout="constrained", squeeze=False)
    plot_loss_frontier(fit, flops, ax=axes[0, 0])
    if panels == 2:
        plot_optimal_allocation(fit, flops, ax=axes[0, 1])
    return fig


def plot_accuracy(fit, tasks=None, flops=None, *, family=None, columns: int = 4):
    """Accuracy against compute, one panel per task: observed scores (by family), the
    posterior 50% and 90% bands of the expected accuracy, and the chance line.

    Parameters
    ----------
    fit
        A :class:`~bayescale.DownstreamFit`.
    tasks
        Tasks to draw (default: every fitted task).
    flops
        Compute grid of the bands; default from the smallest fitted compute to ten times the largest.
    family
        Family of the bands (default: the only family, or ``"new"`` with several, i.e. a family
        drawn from the population, whose band is the honest one for an unseen family).
    columns
        Panels per row.
    """
    observed = fit.observed()
    tasks = fit.tasks if tasks is None else list(tasks)
    if flops is None:
        flops = np.logspace(np.log10(observed["flops"].min()), np.log10(observed["flops"].max()) + 1, 60)
    family = fit.resolve_family(family)
    rows = -(-len(tasks) // columns)
    width = min(columns, len(tasks))
    fig, axes = plt.subplots(rows, width, figsize=(3.4 * width, 2.9 * rows), layout="constrained", squeeze=False)
    for ax, task in zip(axes.ravel(), tasks):
        draws = fit.accuracy_draws(flops, task, family)
        for low, high, alpha in ((5, 95, 0.2), (25, 75, 0.35)):
            ax.fill_between(flops, np.percentile(draws, low, axis=0), np.percentile(draws, high, axis=0), color="C0", alpha=alpha, lw=0)
        ax.plot(flops, np.median(draws, axis=0), color="C0", lw=1.2)
        part = observed[observed["task"] == task]
        for k, (name, rows_of) in enumerate(part.groupby("family", sort=False)):
            ax.scatter(rows_of["flops"], rows_of["accuracy"], s=10, color=f"C{(k + 1) % 10}", label=name, zorder=3)
        ax.axhline(part["chance"].iloc[0], color="0.4", ls=":", lw=1, label="chance")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_flops(v, unit="")))
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(task, fontsize="small")
        ax.set_xlabel("training compute (FLOP)", fontsize="small")
        ax.set_ylabel("accuracy", fontsize="small")
    for ax in axes.ravel()[len(tasks):]:
        ax.set_visible(False)
    axes[0, 0].legend(frameon=False, fontsize="x-small")
    fig.suptitle(f"downstream accuracy ({fit.spec.name}): median, 50% and 90% bands, family {family}", fontsize="small")
    return fig


def plot_emergence(table, ax=None):
    """Emergence thresholds: each task's threshold compute (90% interval, median), with the
    midpoint of its rise, on a log compute axis.

    Parameters
    ----------
    table
        The result of :func:`bayescale.emergence`.
    ax
        Axes to draw on; new ones if omitted.
    """
    fig, ax = _axes(ax)
    tasks = list(dict.fromkeys(table["task"]))
    for quantity, colour, shift in (("threshold_flops", "C3", -0.12), ("midpoint_flops", "C0", 0.12)):
        rows = table[table["quantity"] == quantity].set_index("task").reindex(tasks)
        y = np.arange(len(tasks)) + shift
        # A threshold some draws never reach has an infinite upper quantile: draw it to the edge.
        upper = np.where(np.isfinite(rows["q95"]), rows["q95"], np.nan)
        ax.hlines(y, rows["q5"], np.nan_to_num(upper, nan=np.nanmax(np.r_[rows["q5"], upper]) * 10), color=colour, lw=2)
        ax.scatter(rows["q50"], y, color=colour, s=18, zorder=3, label=quantity.replace("_flops", "").replace("threshold", f"threshold ({rows['definition'].iloc[0]})"))
    by = float(table["by_flops"].iloc[0])
    ax.axvline(by, color="0.4", ls=":", lw=1, label=f"largest fitted compute ({format_flops(by)})")
    ax.set_yticks(np.arange(len(tasks)), tasks, fontsize="small")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_flops(v, unit="")))
    ax.set_xlabel("training compute (FLOP); bars: 90% intervals")
    ax.legend(frameon=False, fontsize="x-small", loc="lower right")
    ax.set_title("when does each task take off?", fontsize="small")
    return fig
