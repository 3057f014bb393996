"""Backtest before you trust: fit the Chinchilla runs below 1e21 FLOP, predict the rest.

Prints the error and the interval coverage of the predictions above the cutoff, overall and
by how far each run extrapolates. Run: ``python examples/backtest.py [--out DIR]``.
"""

import pandas as pd

import bayescale as bs

from _settings import parse, sampler


def main(args: list[str] | None = None) -> dict:
    """Run the example; returns the backtest's summary and per-run rows."""
    options = parse(__doc__.splitlines()[0], args, "example-output/backtest")
    runs = bs.datasets.load("chinchilla", drop_flagged_outliers=True)
    result = bs.backtest(runs, "chinchilla", cutoff_flops=1e21, **sampler(options))
    summary = result.summary()
    print(summary.to_string(index=False))
    bands = pd.cut(result.rows["flops_ratio"], [1, 3, 10, 100, 1e4])
    by_distance = result.rows.groupby(bands, observed=True)[["abs_rel_error", "covered_90"]].agg(["mean", "size"])
    print(by_distance.to_string())
    result.rows.to_csv(options.out / "backtest_rows.csv", index=False)
    return {"summary": summary, "rows": result.rows}


if __name__ == "__main__":
    main()
