"""Fit one family: the Chinchilla law on Epoch AI's reconstruction of the Chinchilla runs.

Prints the parameters with 95% intervals, the predicted loss of a 70B model trained on 1.4T
tokens, and the compute-optimal allocation at Chinchilla's budget; writes the fit (netCDF)
and a figure. Run: ``python examples/fit_one_family.py [--out DIR]``.
"""

import bayescale as bs
from bayescale import plots

from _settings import parse, sampler


def main(args: list[str] | None = None) -> dict:
    """Run the example; returns the summary, prediction and allocation tables."""
    options = parse(__doc__.splitlines()[0], args, "example-output/one-family")
    runs = bs.datasets.load("chinchilla", drop_flagged_outliers=True)  # 240 runs, 57M-16B params
    fit = bs.fit(runs, model="chinchilla", **sampler(options))
    summary = fit.summary()
    prediction = fit.predict(params=7e10, tokens=1.4e12)  # Chinchilla's own size and data
    optimal = fit.optimal(flops=5.76e23)  # Chinchilla's budget (Hoffmann et al. 2022, Table 3)
    print(summary[["parameter", "q2.5", "q50", "q97.5", "r_hat"]].to_string(index=False))
    print(f"loss at 70B params, 1.4T tokens: {prediction['q50'][0]:.3f} (95% interval {prediction['q2.5'][0]:.3f}-{prediction['q97.5'][0]:.3f})")
    ratio = optimal.set_index("quantity").loc["tokens_per_param"]
    print(f"compute-optimal tokens per parameter at 5.76e23 FLOP: {ratio['q50']:.1f} ({ratio['q2.5']:.1f}-{ratio['q97.5']:.1f})")
    fit.save(options.out / "fit.nc")
    plots.plot_fit(fit).savefig(options.out / "fit.png", dpi=110)
    return {"summary": summary, "prediction": prediction, "optimal": optimal, "fit": fit}


if __name__ == "__main__":
    main()
