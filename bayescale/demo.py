"""The demo: fit the bundled Chinchilla data and write what a user would look at.

Besides the fit it runs a backtest (refit below 1e21 FLOP, predict the 23 larger runs) and a
design (which of 30 candidate runs most narrow the Chinchilla prediction per FLOP), so that
its HTML report shows every section a loss fit can have.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import datasets
from .backtest import backtest
from .design import suggest_runs
from .fit import fit
from .report import write_report

#: Scales worth predicting: Chinchilla (70B params, 1.4T tokens) and Gopher (280B, 300B),
#: Hoffmann et al. (2022) Table 1.
DEMO_TARGETS = pd.DataFrame({"model": ["Chinchilla", "Gopher"], "params": [7.0e10, 2.8e11], "tokens": [1.4e12, 3.0e11]})
#: Chinchilla's training budget, 5.76e23 FLOP (Hoffmann et al. 2022, Table 3), and a decade either side.
DEMO_BUDGETS = np.array([5.76e22, 5.76e23, 5.76e24])
#: Backtest cutoff: the runs at or above 1e21 FLOP (23 of 240, up to 13x beyond it) are predicted.
DEMO_CUTOFF = 1e21
# A wide menu of tokens per parameter (2.5-320, like Chinchilla's IsoFLOP sweeps): in the design
# benchmark a menu this wide gave 0.57x the usual grid's width, one of 5-80 0.87x (docs/results.md).
_RATIOS = np.array([2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0])
#: Candidate next runs: 6 sizes from 100M to 3B at 2.5 to 320 tokens per parameter, and their budget.
DEMO_CANDIDATES = pd.DataFrame(
    {"params": np.repeat(np.geomspace(1e8, 3e9, 6), _RATIOS.size), "tokens": np.repeat(np.geomspace(1e8, 3e9, 6), _RATIOS.size) * np.tile(_RATIOS, 6)}
)
DEMO_DESIGN_BUDGET = 2e20


def run_demo(out: Path, *, num_chains: int = 4, num_warmup: int = 1000, num_samples: int = 1000, seed: int = 0, device: str | None = None) -> dict[str, Path]:
    """Fit the Chinchilla card to Epoch AI's reconstruction of the Chinchilla runs.

    Writes ``fit.nc``, ``summary.csv``, ``predictions.csv``, ``optimal.csv``, ``fit.png``,
    ``backtest.csv``, ``design.csv`` and ``report.html`` to ``out`` and prints the key numbers
    to stdout.

    Parameters
    ----------
    out
        Output folder (created if missing).
    num_chains, num_warmup, num_samples, seed, device
        Sampler settings (see :func:`bayescale.fit`).

    Returns
    -------
    dict
        Paths of the files written, by name.
    """
    from .plots import plot_fit

    out.mkdir(parents=True, exist_ok=True)
    runs = datasets.load("chinchilla", drop_flagged_outliers=True)
    sampler = dict(seed=seed, num_chains=num_chains, num_warmup=num_warmup, num_samples=num_samples, device=device)
    result = fit(runs, "chinchilla", **sampler)
    print(f"bayescale: backtest: refitting below {DEMO_CUTOFF:.0e} FLOP", file=sys.stderr)
    checked = backtest(runs, "chinchilla", cutoff_flops=DEMO_CUTOFF, **sampler)
    chinchilla = DEMO_TARGETS.iloc[0]
    design = suggest_runs(result, DEMO_CANDIDATES, DEMO_DESIGN_BUDGET, {"params": chinchilla["params"], "tokens": chinchilla["tokens"]}, seed=seed)
    summary = result.summary()
    predictions = result.predict(params=DEMO_TARGETS["params"], tokens=DEMO_TARGETS["tokens"])
    predictions.insert(0, "model", DEMO_TARGETS["model"].to_numpy())
    optimal = result.optimal(DEMO_BUDGETS)
    paths = {
        "fit": result.save(out / "fit.nc"),
        "summary": out / "summary.csv",
        "predictions": out / "predictions.csv",
        "optimal": out / "optimal.csv",
        "figure": out / "fit.png",
        "backtest": out / "backtest.csv",
        "design": out / "design.csv",
    }
    summary.to_csv(paths["summary"], index=False)
    predictions.to_csv(paths["predictions"], index=False)
    optimal.to_csv(paths["optimal"], index=False)
    plot_fit(result).savefig(paths["figure"], dpi=120)
    checked.rows.to_csv(paths["backtest"], index=False)
    design.candidates.to_csv(paths["design"], index=False)
    targets = DEMO_TARGETS.rename(columns={"model": "name"})
    paths["report"] = write_report(result, out / "report.html", targets=targets, budgets=DEMO_BUDGETS, backtest=checked, design=design, title="bayescale demo: Chinchilla")

    ratio = optimal[(optimal["quantity"] == "tokens_per_param") & np.isclose(optimal["flops"], 5.76e23)].iloc[0]
    lines = ["", "Chinchilla law fitted to Epoch AI's reconstruction of Hoffmann et al. (2022), 240 runs:"]
    for _, row in summary.iterrows():
        lines.append(f"  {row['parameter']:>6} = {row['q50']:.4g}  (95% interval {row['q2.5']:.4g} to {row['q97.5']:.4g})")
    for _, row in predictions.iterrows():
        lines.append(f"  {row['model']} loss: {row['q50']:.3f} nats (95% interval {row['q2.5']:.3f} to {row['q97.5']:.3f})")
    lines.append(f"  compute-optimal tokens per parameter at 5.76e23 FLOP: {ratio['q50']:.1f} (95% interval {ratio['q2.5']:.1f} to {ratio['q97.5']:.1f})")
    scores = checked.summary().iloc[0]
    lines.append(
        f"  backtest (fit below {DEMO_CUTOFF:.0e} FLOP, predict the {int(scores['n'])} larger runs): median error "
        f"{scores['median_abs_rel_error']:.2%}, {scores['coverage_90']:.0%} inside the 90% intervals"
    )
    lines.append(
        f"  next runs: {len(design.selected)} chosen for {design.spent:.2g} FLOP narrow the Chinchilla "
        f"prediction's 95% width from {design.width_95_before:.3f} to {design.width_95_after:.3f} nats (expected)"
    )
    lines.append(f"  diagnostics: {'no problems found' if result.diagnostics.ok else '; '.join(result.diagnostics.problems)}")
    lines.append(f"  wrote {', '.join(str(p) for p in paths.values())}")
    print("\n".join(lines))
    return paths
