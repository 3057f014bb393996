"""One self-contained HTML report of a fit: figures embedded, warnings in words.

The report answers, for one fit, the questions a team asks before acting on it: does the
law fit the runs (data and posterior bands), can the sampler be trusted (diagnostics, in
words, with what to try), what are the parameters and what trades off against what
(posterior pairs of the exponents), how big to go (compute-optimal frontier), what will the
target runs score (predictions, with how far they extrapolate), would this have been right
before (backtest calibration), and which runs to train next (design). Downstream fits get
accuracy curves and emergence thresholds instead of the loss-only sections.

The file has no external references (images are base64 PNGs, the style is inline), so it
can be mailed or attached to a run log and opened anywhere.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots
from .diagnostics import MAX_R_HAT, MIN_ESS
from .downstream import DownstreamFit
from .emergence import emergence
from .hierarchy import NEW_FAMILY
from .plots import format_count, format_flops

#: Targets this many times beyond the largest fitted compute are flagged as far extrapolations:
#: the backtests in docs/results.md reach 4-20x (and coverage already fell to 61% at up to 13x on
#: the Chinchilla runs), so nothing here has checked a prediction two decades out.
FAR_EXTRAPOLATION = 100.0
#: A backtest whose 90% intervals cover fewer than this share of held-out rows is flagged
#: (with 10 or more rows, 0.8 is below what a calibrated 90% interval gives by chance, p < 0.07).
MIN_BACKTEST_COVERAGE = 0.8

_STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1f24;
       max-width: 1040px; margin: 2em auto; padding: 0 1.2em; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; } h2 { font-size: 1.25em; margin-top: 1.8em;
     border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; }
.meta { color: #57606a; font-size: 0.9em; }
.box { border-radius: 6px; padding: 0.6em 1em; margin: 1em 0; }
.ok { background: #dafbe1; border: 1px solid #4ac26b; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; }
.warn li { margin: 0.3em 0; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.6em 0; }
th, td { border-bottom: 1px solid #d0d7de; padding: 0.25em 0.7em; text-align: right; }
th { background: #f6f8fa; } td:first-child, th:first-child { text-align: left; }
tr.flag td { background: #fff8c5; }
figcaption, .note { color: #57606a; font-size: 0.9em; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def write_report(
    fit,
    path: str | Path,
    *,
    targets: pd.DataFrame | None = None,
    budgets=None,
    backtest=None,
    design=None,
    title: str | None = None,
) -> Path:
    """Write one self-contained HTML report of a fit.

    Parameters
    ----------
    fit
        A :class:`~bayescale.Fit` or :class:`~bayescale.DownstreamFit`.
    path
        The HTML file to write (folders are created).
    targets
        Scales to predict: for a loss fit a DataFrame with the law's inputs (``params`` and
        ``tokens``, or ``flops``) and an optional ``name`` column; for a downstream fit a
        ``flops`` column. Default: none for a loss fit (the frontier table covers larger
        budgets); 10x and 100x the largest fitted compute for a downstream fit.
    budgets
        Budgets (FLOP) of the compute-optimal table; default the three powers of ten above
        the largest fitted compute.
    backtest
        A :class:`~bayescale.Backtest` of the same card, shown as a calibration section.
    design
        A :class:`~bayescale.Design` (from :func:`bayescale.suggest_runs`), shown as the
        next-runs section.
    title
        Heading of the report (default names the card).

    Returns
    -------
    pathlib.Path
        The file written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(fit, targets=targets, budgets=budgets, backtest=backtest, design=design, title=title), encoding="utf-8")
    return path


def render_report(fit, *, targets=None, budgets=None, backtest=None, design=None, title=None) -> str:
    """The report of :func:`write_report` as an HTML string.

    Parameters
    ----------
    fit, targets, budgets, backtest, design, title
        As for :func:`write_report`.

    Returns
    -------
    str
    """
    downstream = isinstance(fit, DownstreamFit)
    observed = fit.observed()
    largest = float(observed["flops"].max())
    if budgets is None:
        budgets = 10.0 ** (np.ceil(np.log10(largest)) + np.arange(3))
    budgets = np.atleast_1d(np.asarray(budgets, dtype=float))
    warnings = list(fit.diagnostics.problems)
    sections = [_data_section(fit, observed), _parameter_section(fit)]
    if downstream:
        if targets is None:
            targets = pd.DataFrame({"flops": largest * np.array([10.0, 100.0])})
        sections += [_emergence_section(fit), _accuracy_prediction_section(fit, targets, largest, warnings)]
    else:
        sections += [_pairs_section(fit), _frontier_section(fit, budgets)]
        if targets is not None:
            sections.append(_prediction_section(fit, targets, largest, warnings))
    if backtest is not None:
        sections.append(_backtest_section(fit, backtest, warnings))
    if design is not None:
        sections.append(_design_section(design))
    sections.append(_provenance_section(fit))
    name = fit.spec.name
    heading = title or f"bayescale report: {name}"
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = (
        f"<h1>{_text(heading)}</h1>"
        f'<p class="meta">card <b>{_text(name)}</b> · {len(observed)} observations · '
        f"{len(fit.families)} famil{'y' if len(fit.families) == 1 else 'ies'} · compute "
        f"{format_flops(observed['flops'].min())} to {format_flops(largest)} · written {created} "
        f"by bayescale {_text(fit.attrs.get('bayescale_version', '?'))}</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_text(heading)}</title><style>{_STYLE}</style></head><body>"
        + head
        + _verdict(fit.diagnostics, warnings)
        + "".join(sections)
        + "</body></html>\n"
    )


# --- building blocks ----------------------------------------------------------------------


def _text(value) -> str:
    return html.escape(str(value))


def _figure(fig, caption: str) -> str:
    encoded = base64.b64encode(plots.png_bytes(fig)).decode("ascii")
    return f'<figure><img alt="{_text(caption)}" src="data:image/png;base64,{encoded}"><figcaption>{_text(caption)}</figcaption></figure>'


def _table(frame: pd.DataFrame, flagged=None) -> str:
    """An HTML table; rows where ``flagged`` is true are highlighted."""
    flagged = np.zeros(len(frame), dtype=bool) if flagged is None else np.asarray(flagged, dtype=bool)
    head = "".join(f"<th>{_text(c)}</th>" for c in frame.columns)
    body = []
    for flag, (_, row) in zip(flagged, frame.iterrows()):
        cells = "".join(f"<td>{_text(_format(v))}</td>" for v in row)
        body.append(f'<tr class="flag">{cells}</tr>' if flag else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _format(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def _section(heading: str, *parts: str) -> str:
    return f"<section><h2>{_text(heading)}</h2>{''.join(parts)}</section>"


def _interval(low: float, mid: float, high: float, fmt) -> str:
    return f"{fmt(mid)} ({fmt(low)} to {fmt(high)})"


def _verdict(diagnostics, warnings: list[str]) -> str:
    numbers = (
        f"{diagnostics.num_chains} chains x {diagnostics.num_samples} draws; {diagnostics.divergences} divergences; "
        f"largest R-hat {diagnostics.max_r_hat:.3f}; smallest bulk / tail ESS {diagnostics.min_ess_bulk:.0f} / "
        f"{diagnostics.min_ess_tail:.0f}"
    )
    if not warnings:
        return f'<div class="box ok"><b>No problems found.</b> {_text(numbers)}.</div>'
    items = "".join(f"<li>{_text(w)}</li>" for w in warnings)
    return f'<div class="box warn"><b>Read before trusting these numbers ({len(warnings)}):</b><ul>{items}</ul><span class="note">{_text(numbers)}.</span></div>'


# --- sections -----------------------------------------------------------------------------


def _data_section(fit, observed) -> str:
    if isinstance(fit, DownstreamFit):
        figure = _figure(plots.plot_accuracy(fit), "Observed accuracies and the posterior median, 50% and 90% bands of the expected accuracy per task; dotted: chance.")
        return _section("Data and posterior", figure)
    if fit.spec.hierarchical:
        figure = _figure(plots.plot_families(fit), "Each family's runs and the 95% band of its loss along the compute-optimal frontier; dashed: a family not yet trained, drawn from the population.")
    else:
        figure = _figure(plots.plot_loss_frontier(fit), "Observed runs and the 50% / 95% posterior band of the loss of compute-optimally allocated runs; runs off the frontier lie above it.")
    per_family = observed.groupby("family").agg(observations=("flops", "size"), sizes=("params", "nunique") if "params" in observed else ("flops", "nunique"), smallest_flops=("flops", "min"), largest_flops=("flops", "max")).reset_index()
    for column in ("smallest_flops", "largest_flops"):
        per_family[column] = per_family[column].map(format_flops)
    return _section("Data and posterior", figure, _table(per_family))


def _parameter_section(fit) -> str:
    table = fit.summary()
    flagged = ~((table["r_hat"] < MAX_R_HAT) | table["r_hat"].isna()) | (table["ess_bulk"] < MIN_ESS)
    # R-hat is read against 1.01, so it needs three decimals; ESS is a count.
    table["r_hat"] = table["r_hat"].map(lambda v: f"{v:.3f}")
    for column in ("ess_bulk", "ess_tail"):
        table[column] = table[column].map(lambda v: f"{v:.0f}")
    note = (
        f'<p class="note">Posterior mean, sd and 95% interval of each parameter; highlighted rows have '
        f"R-hat above {MAX_R_HAT} or bulk ESS below {MIN_ESS}.</p>"
    )
    return _section("Parameters and diagnostics", note, _table(table, flagged))


def _pairs_section(fit) -> str:
    caption = "Posterior draws of the exponents (and E): an elongated cloud is a trade-off the data cannot resolve, which widens extrapolations."
    return _section("Posterior pairs of the exponents", _figure(plots.plot_pairs(fit), caption))


def _default_family(fit) -> str | None:
    """The family a loss fit's tables are for: with several pooled families, a new one drawn from
    the population (the honest answer for a family the caller did not name)."""
    return NEW_FAMILY if fit.spec.hierarchical and len(fit.families) > 1 else None


def _frontier_section(fit, budgets) -> str:
    family = _default_family(fit)
    for_whom = " for a new family drawn from the population" if family else ""
    if fit.spec.law.optimal_fn is None:
        table = fit.predict(flops=budgets, family=family)
        rows = pd.DataFrame({"budget": [format_flops(b) for b in budgets], "loss, nats (95%)": [_interval(r["q2.5"], r["q50"], r["q97.5"], lambda v: f"{v:.3f}") for _, r in table.iterrows()]})
        return _section("Loss at larger budgets", f'<p class="note">The compute law has no parameter/token split; this is its loss{for_whom}.</p>', _table(rows))
    table = fit.optimal(budgets, family=family)
    rows = []
    for budget in budgets:
        at = table[np.isclose(table["flops"], budget)].set_index("quantity")
        rows.append(
            {
                "budget": format_flops(budget),
                "parameters (95%)": _interval(*at.loc["params", ["q2.5", "q50", "q97.5"]], format_count),
                "tokens (95%)": _interval(*at.loc["tokens", ["q2.5", "q50", "q97.5"]], format_count),
                "tokens / parameter": _interval(*at.loc["tokens_per_param", ["q2.5", "q50", "q97.5"]], lambda v: f"{v:.3g}"),
                "loss, nats": _interval(*at.loc["loss", ["q2.5", "q50", "q97.5"]], lambda v: f"{v:.3f}") if "loss" in at.index else "",
            }
        )
    figure = _figure(plots.plot_optimal_allocation(fit, family=family), f"Compute-optimal parameters and tokens (median and 95% band){for_whom}; dots: the fitted runs.")
    return _section("Compute-optimal frontier", figure, f'<p class="note">Median (95% interval){for_whom}.</p>', _table(pd.DataFrame(rows)))


def _prediction_section(fit, targets: pd.DataFrame, largest: float, warnings: list[str]) -> str:
    inputs = {k: targets[k].to_numpy(dtype=float) for k in ("params", "tokens", "flops") if k in targets}
    family = targets["family"].iloc[0] if "family" in targets else _default_family(fit)
    table = fit.predict(**inputs, family=family)
    names = targets["name"].astype(str).tolist() if "name" in targets else [f"target {k + 1}" for k in range(len(table))]
    ratio = table["flops"].to_numpy(dtype=float) / largest
    rows = pd.DataFrame(
        {
            "target": names,
            "parameters": [format_count(v) for v in table["params"]] if "params" in table else "",
            "tokens": [format_count(v) for v in table["tokens"]] if "tokens" in table else "",
            "compute": [format_flops(v) for v in table["flops"]],
            "x largest fitted": [f"{r:.3g}" for r in ratio],
            "loss, nats: median": table["q50"],
            "50% interval": [f"{a:.3f} to {b:.3f}" for a, b in zip(table["q25"], table["q75"])],
            "95% interval": [f"{a:.3f} to {b:.3f}" for a, b in zip(table["q2.5"], table["q97.5"])],
        }
    ).loc[:, lambda f: [c for c in f.columns if not (f[c] == "").all()]]
    _flag_extrapolation(names, ratio, largest, warnings)
    note = '<p class="note">Expected loss of a run at each target (the law, without a single run\'s noise).</p>'
    return _section("Predictions at your targets", note, _table(rows, ratio > FAR_EXTRAPOLATION))


def _flag_extrapolation(names, ratio, largest: float, warnings: list[str]) -> None:
    far = [f"{n} ({r:.3g}x)" for n, r in zip(names, ratio) if r > FAR_EXTRAPOLATION]
    if far:
        warnings.append(
            f"Predictions for {', '.join(far)} extrapolate more than {FAR_EXTRAPOLATION:g}x beyond the largest fitted "
            f"compute ({format_flops(largest)}). The intervals assume the law holds out there; a backtest at a similar "
            "ratio (bayescale backtest --cutoff-flops) shows whether it did on data like yours."
        )


def _accuracy_prediction_section(fit, targets: pd.DataFrame, largest: float, warnings: list[str]) -> str:
    flops = targets["flops"].to_numpy(dtype=float)
    table = fit.predict(flops=flops)
    rows = pd.DataFrame(
        {
            "task": table["task"],
            "compute": [format_flops(v) for v in table["flops"]],
            "accuracy: median": table["q50"],
            "90% interval": [f"{a:.3f} to {b:.3f}" for a, b in zip(table["q5"], table["q95"])],
        }
    )
    names = [format_flops(v) for v in flops]
    ratio = flops / largest
    _flag_extrapolation(names, ratio, largest, warnings)
    family = fit.resolve_family(None)
    whose = "a new family, drawn from the population" if family == "new" else f"family {_text(family)}"
    note = f'<p class="note">Expected accuracy of {whose} at each compute.</p>'
    return _section("Predicted accuracy", note, _table(rows, table["flops"].to_numpy() / largest > FAR_EXTRAPOLATION))


def _emergence_section(fit) -> str:
    table = emergence(fit)
    rows = []
    for task in fit.tasks:
        at = table[table["task"] == task].set_index("quantity")
        threshold, midpoint = at.loc["threshold_flops"], at.loc["midpoint_flops"]
        rows.append(
            {
                "task": task,
                "threshold compute (90%)": _interval(threshold["q5"], threshold["q50"], threshold["q95"], _flops_or_never),
                "midpoint compute (90%)": _interval(midpoint["q5"], midpoint["q50"], midpoint["q95"], _flops_or_never),
                "P(emerged within the data)": threshold["p_emerged_by"],
                "P(never)": threshold["p_never"],
            }
        )
    definition = table["definition"].iloc[0]
    note = f'<p class="note">Threshold: the compute at which {_text(definition)}; midpoint: halfway up the rise. "never": some draws never reach it.</p>'
    figure = _figure(plots.plot_emergence(table), "Emergence threshold and midpoint per task, 90% intervals; dotted: the largest fitted compute.")
    return _section("Emergence", note, _table(pd.DataFrame(rows)), figure)


def _flops_or_never(value: float) -> str:
    return format_flops(value, unit="") if np.isfinite(value) else "never"


def _backtest_section(fit, backtest, warnings: list[str]) -> str:
    summary = backtest.summary()
    overall = summary.iloc[0]
    if overall["n"] >= 10 and overall["coverage_90"] < MIN_BACKTEST_COVERAGE:
        warnings.append(
            f"In the backtest (held out {backtest.held_out}), the 90% intervals covered only {overall['coverage_90']:.0%} of "
            f"{int(overall['n'])} held-out observations: the intervals are too narrow for this data, so the law or its "
            "noise model does not hold across its range. Distrust far extrapolations, and compare cards by their "
            "backtests (bayescale backtest --model ...)."
        )
    if backtest.fit is not fit:  # a report of the backtest's own fit already lists its problems
        warnings.extend(f"Backtest fit: {problem}" for problem in backtest.fit.diagnostics.problems)
    note = f'<p class="note">The card refitted without {_text(backtest.held_out)}, then asked to predict those observations (with observation noise). Calibrated intervals cover about 50%, 90% and 95% of them.</p>'
    return _section("Backtest: would it have been right?", note, _figure(plots.plot_backtest(backtest), "Predicted against observed, with 90% intervals; on the dotted line the prediction was exact."), _table(summary))


def _design_section(design) -> str:
    chosen = design.selected
    rows = pd.DataFrame(
        {
            "order": chosen["order"].astype(int),
            "parameters": [format_count(v) for v in chosen["params"]],
            "tokens": [format_count(v) for v in chosen["tokens"]],
            "cost": [format_flops(v) for v in chosen["cost"]],
            "expected information (nats)": chosen["expected_gain"],
            "95% width after": chosen["width_95_after"],
        }
    )
    note = (
        f'<p class="note">Chosen to narrow the {_text(design.target)}: {len(chosen)} runs costing {format_flops(design.spent)} of '
        f"{format_flops(design.budget_flops)}; expected 95% width {design.width_95_before:.3g} now, {design.width_95_after:.3g} after.</p>"
    )
    return _section("Next runs to train", note, _figure(plots.plot_design(design), "Candidate runs coloured by expected information per FLOP; ringed and numbered: the batch, in the order chosen."), _table(rows))


def _provenance_section(fit) -> str:
    attrs = fit.attrs
    rows = pd.DataFrame(
        {
            "item": ["model card", "data", "data hash (sha256)", "seed", "bayescale version"],
            "value": [attrs.get("model_name", fit.spec.name), attrs.get("data_source", "?"), attrs.get("data_hash", "?"), attrs.get("seed", "?"), attrs.get("bayescale_version", "?")],
        }
    )
    card = f"<details><summary>model card</summary><pre>{_text(attrs.get('model_card', ''))}</pre></details>"
    return _section("Provenance", _table(rows), card)
