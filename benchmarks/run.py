"""Speed benchmarks: bayescale against what users run today, measured in the same run.

Workload ``chinchilla`` (the bundled 240 Epoch AI points, Chinchilla law):
  * bayescale ``fit()`` with defaults in a fresh process, cold and then warm compilation cache,
    and a refit of the same shapes in the same process (which must not recompile);
  * a hand-written numpyro model (natural parameters, ``MCMC`` defaults, 4 vectorised chains);
  * PyMC + nutpie (low-rank mass matrix) on the same hand-written model and on bayescale's own
    coordinates, when both are installed (``pip install 'bayescale[bench]'``);
  * the Hoffmann/Epoch method: Huber loss (delta 1e-3) on log loss, L-BFGS-B from a grid of
    starts, 200 bootstrap refits, each either from the whole grid again or warm-started from the
    full-data optimum, with tolerances tight enough to move (with L-BFGS-B's default ftol a warm
    start stops at once, the Huber objective being ~1e-3, and the bootstrap reports near-zero widths).

Workload ``many`` (64 simulated tasks x 10 compute-power-law points): ``fit_many`` against
scipy ``curve_fit`` point fits with 200-resample bootstraps, and against a loop of ``fit()``.

Workload ``hierarchical`` (issue 3: 12 families x 6 sizes x 3 seeds x 20 checkpoints = 4,320
rows, drawn from a known population by ``bayescale.datasets.simulate.simulate_sweep``): the
``chinchilla-hierarchical`` card with its defaults, in a fresh process per simulated world;
convergence, time, and whether the 95% intervals cover the population's truth.

Workload ``borrowing`` (issue 3): in simulated 6-family sweeps one family keeps only its two
smallest sizes; its expected loss at the held-out sizes 10-100x its largest kept compute is
predicted by the pooled card (all families) and by the plain card fitted to that family alone:
median relative error and 95% interval coverage of the truth.

Workload ``real-pooling`` (issue 3, real data): leave-one-family-out backtests
(``bs.backtest(..., family=F, keep_sizes=2)``) on two public multi-family suites read from
``../shared/data`` (not shipped): the (Mis)Fitting open_lm sweep (Li et al. 2025; families are
peak learning rates 1e-3, 2e-3, 4e-3; final losses of runs with at least 5 tokens per
parameter) and Gemstones (McLeish et al. 2025; families are the ``hot``, ``cool_end`` and
``lr_ablation_hot`` schedules; every checkpoint). Each family in turn keeps its two smallest
sizes; the pooled card sees the other two families whole, the plain card that family alone.

Workload ``design`` (issue 5): simulated worlds (a Chinchilla truth, 1% noise) start from 6
small runs (2e7-1e8 params, 10 and 40 tokens/param); candidates are 8 sizes (5e7-2e9) x 5
ratios (5-80 tokens/param). At the same budget (the cost of the usual grid: the 7 candidate
sizes up to 1.2e9 at 20 tokens/param), six strategies add runs: ``suggest_runs`` (target:
loss at 70B params, 1.4T tokens) in one batch, in one batch with each candidate up to three
times (``max_repeats=3``, each repeat a run with its own noise), in three rounds (a third
of the budget, refit, and again), and from a wider menu (11 sizes 2e7-2e9 at 2.5-320
tokens/param; the benchmark's choice of menu, not the method's), that grid, and random
candidates. Their outcomes are drawn
from the truth, the card is refitted, and the target's 95% interval width, error and
coverage are compared.

Workload ``emergence-design`` (issue 5): simulated worlds of 3 tasks (midpoints 1e19 and 3e20
FLOP, and the target's drawn from 1e21.5-1e22.5 with a slope of 2-4 per decade; 1,000 items,
over-dispersed); ``downstream-sigmoid`` is fitted to 5 models (3e18-3e20 FLOP), where the target
task has not yet risen. At the budget of the next three sizes up (1e21, 3.2e21, 1e22 FLOP),
``suggest_runs`` (target: the task's emergence threshold) chooses among 13 models from 1e19 to
1e22 FLOP (quarter decades), and a random choice takes them in random order while the budget
lasts; each set is evaluated (simulated), the card refitted, and the threshold's 95% interval
width (decades), error and coverage compared.

Workload ``downstream`` (issue 4): (a) Pythia (bundled ``pythia_evals``, Biderman et al. 2023):
final checkpoints of the models up to 1.4B (both suites, 8 zero-shot tasks) are fitted with
``downstream-sigmoid``; the 2.8B, 6.9B and 12B accuracies are predicted (an evaluation's
observed accuracy, so binomial and over-dispersion noise included) and scored, against two
point baselines: the 1.4B model's accuracy (persistence) and a straight line in log compute
through the two largest fitted models. (b) Simulated emergent worlds: 6 families (shifts of
sd 0.3 decades), 6 steep tasks (slope 3-10 per decade, midpoints 10^21.5-10^24 FLOP, chance
0, 0.25 or 0.5), 8 models per family, 500 items, Beta-binomial scores; fitted below 2e22 FLOP,
everything above predicted: 90% interval coverage, mean absolute error, and whether every
task gets an ordered emergence interval.

Workload ``tasks`` (issue 6): 500 simulated downstream tasks x 10 models (1e19-1e23 FLOP;
midpoints 10^19.5-10^23.5 FLOP, slopes 0.5-4 per decade, chance 0, 0.25 or 0.5, ceilings
0.6-0.95; 1,000 items, Beta-binomial scores of concentration 300). ``fit_many(by="task")``
with ``downstream-sigmoid`` (each task alone, defaults: independence Metropolis-Hastings in
batches of 64, second proposals adapted longer for the tasks that fail a check, NUTS for any that
fail every attempt), against scipy ``curve_fit`` of the same sigmoid
(chance known) with 200 bootstrap resamples per task: wall time, tasks converged, and 95%
interval coverage of the true midpoints.

Figures: wall time, min bulk ESS, ESS/s, ESS per 1,000 gradient evaluations (sampling phase),
R-hat, peak memory. Results: benchmarks/results/<workload>.json and .md.

Usage: python benchmarks/run.py [--workload chinchilla|many|hierarchical|borrowing|real-pooling|design|emergence-design|downstream|tasks|all] [--bootstrap 200] [--seed 0] [--worlds 3] [--tasks 500]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.optimize
from scipy.special import logsumexp

import bayescale as bs
from bayescale import engine, independence
from bayescale._arviz import az
from bayescale.diagnostics import MAX_R_HAT, MIN_ESS

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: A coarse version of Epoch AI's grid of starts (their notebook uses 4500 points).
GRID = list(itertools.product([0.0, 1.0], [0.0, 5.0, 10.0], [0.0, 5.0, 10.0], [0.2, 0.5], [0.2, 0.5]))

#: Run in a fresh interpreter: one default fit, with its own timing and peak memory.
FRESH_PROCESS = """
import json, resource, sys, time
started = time.perf_counter()
import bayescale as bs
runs = bs.datasets.load("chinchilla", drop_flagged_outliers=True)
fit_started = time.perf_counter()
fit = bs.fit(runs, "chinchilla", seed=int(sys.argv[1]), progress=False)
done = time.perf_counter()
steps = int(fit.idata.sample_stats["n_steps"].sum())
print(json.dumps({"fit_seconds": done - fit_started, "process_seconds": done - started,
                  "min_ess_bulk": fit.diagnostics.min_ess_bulk, "max_r_hat": fit.diagnostics.max_r_hat,
                  "divergences": fit.diagnostics.divergences, "gradient_evaluations": steps,
                  "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def huber_objective(theta, log_n, log_d, log_loss, delta=1e-3):
    """Huber loss of the log-space Chinchilla law and its exact gradient."""
    e, a, b, alpha, beta = theta
    terms = np.stack([np.full_like(log_n, e), a - alpha * log_n, b - beta * log_d])
    predicted = logsumexp(terms, axis=0)
    r = predicted - log_loss
    value = np.sum(np.where(np.abs(r) <= delta, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta)))
    weight = np.clip(r, -delta, delta) * np.exp(terms - predicted)  # dH/dr * softmax share of each term
    grad = np.array([weight[0].sum(), weight[1].sum(), weight[2].sum(), -(weight[1] * log_n).sum(), -(weight[2] * log_d).sum()])
    return value, grad


def _minimise(start, log_n, log_d, log_loss):
    options = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000}  # see module docstring
    return scipy.optimize.minimize(huber_objective, start, args=(log_n, log_d, log_loss), jac=True, method="L-BFGS-B", options=options)


def huber_fit(log_n, log_d, log_loss, starts=GRID):
    """Best Huber fit over the starting points; returns (natural parameters, raw optimum)."""
    best = min((_minimise(start, log_n, log_d, log_loss) for start in starts), key=lambda result: result.fun)
    e, a, b, alpha, beta = best.x
    return {"E": np.exp(e), "A": np.exp(a), "alpha": alpha, "B": np.exp(b), "beta": beta}, best.x


def huber_bootstrap(log_n, log_d, log_loss, resamples, seed, *, grid_each_refit: bool):
    """Huber fit from the grid, then ``resamples`` bootstrap refits, each from the whole grid
    (as the full-data fit) or warm-started from the full-data optimum (the cheapest honest variant)."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    point, optimum = huber_fit(log_n, log_d, log_loss)
    refits = []
    for _ in range(resamples):
        i = rng.integers(0, len(log_n), len(log_n))
        refits.append(huber_fit(log_n[i], log_d[i], log_loss[i], starts=GRID if grid_each_refit else [optimum])[0])
    seconds = time.perf_counter() - started
    intervals = {n: list(np.quantile([r[n] for r in refits], [0.025, 0.975])) for n in ("alpha", "beta")}
    return {"seconds": seconds, "resamples": resamples, "grid_starts": len(GRID), "point": point, "intervals": intervals}


def fresh_process(seed, cache: str):
    """One default fit in a new interpreter (as ``bayescale fit`` runs), compiling into ``cache``."""
    environment = {**os.environ, "BAYESCALE_COMPILATION_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(seed)], check=True, capture_output=True, text=True, env=environment)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["ess_per_second"] = result["min_ess_bulk"] / result["fit_seconds"]
    result["ess_per_1000_gradients"] = 1000 * result["min_ess_bulk"] / result["gradient_evaluations"]
    return result


def handwritten_numpyro(log_n, log_d, log_loss, seed):
    """The model as a user would write it in numpyro: natural parameters, MCMC defaults."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    def model(log_n, log_d, log_loss=None):
        e = numpyro.sample("e", dist.Normal(0.5, 1.0))
        a = numpyro.sample("a", dist.Normal(6.0, 2.0))
        b = numpyro.sample("b", dist.Normal(7.0, 2.0))
        alpha = numpyro.sample("alpha", dist.LogNormal(-1.05, 0.6))
        beta = numpyro.sample("beta", dist.LogNormal(-1.05, 0.6))
        sigma = numpyro.sample("sigma", dist.HalfNormal(0.05))
        nu = numpyro.sample("nu", dist.Gamma(2.0, 0.1))
        mean = jax.nn.logsumexp(jnp.stack([jnp.broadcast_to(e, log_n.shape), a - alpha * log_n, b - beta * log_d]), axis=0)
        numpyro.sample("y", dist.StudentT(nu, mean, sigma), obs=log_loss)

    mcmc = MCMC(NUTS(model), num_warmup=1000, num_samples=1000, num_chains=4, chain_method="vectorized", progress_bar=False)
    started = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), jnp.asarray(log_n), jnp.asarray(log_d), jnp.asarray(log_loss), extra_fields=("num_steps",))
    samples = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(samples)
    seconds = time.perf_counter() - started
    posterior = az.from_dict(posterior={k: np.asarray(v) for k, v in samples.items()})
    ess = float(az.ess(posterior).to_array().min())
    steps = int(np.asarray(mcmc.get_extra_fields()["num_steps"]).sum())
    return _sampler_result(seconds, ess, float(az.rhat(posterior).to_array().max()), steps)


def pymc_nutpie(log_n, log_d, log_loss, seed, *, reparameterised: bool):
    """PyMC + nutpie (low-rank mass matrix) on the hand-written model or on bayescale's own
    coordinates (centred inputs, log total loss at the centre, stick-breaking logits of the
    terms' shares, the card's priors as potentials); ``None`` where they are not installed."""
    try:
        import nutpie
        import pymc as pm
        from pytensor.tensor import softplus
    except ImportError:
        return None
    with pm.Model() as model:
        alpha = pm.LogNormal("alpha", -1.05, 0.6)
        beta = pm.LogNormal("beta", -1.05, 0.6)
        sigma = pm.HalfNormal("sigma", 0.05)
        nu = pm.Gamma("nu", 2.0, 0.1)
        if reparameterised:
            x_n, x_d = log_n - log_n.mean(), log_d - log_d.mean()
            total, z_e, z_a = pm.Flat("log_loss_centre"), pm.Flat("logit_share_e"), pm.Flat("logit_share_a_c")

            def log_sigmoid(z):
                return -softplus(-z)

            e = total + log_sigmoid(z_e)
            rest = total + log_sigmoid(-z_e)
            a, b = rest + log_sigmoid(z_a), rest + log_sigmoid(-z_a)
            pm.Potential("card_priors", pm.logp(pm.Normal.dist(0.5, 1.0), e) + pm.logp(pm.Normal.dist(-1.0, 1.5), a) + pm.logp(pm.Normal.dist(-1.0, 1.5), b))
        else:
            x_n, x_d = log_n, log_d
            e, a, b = pm.Normal("e", 0.5, 1.0), pm.Normal("a", 6.0, 2.0), pm.Normal("b", 7.0, 2.0)
        stacked = pm.math.stack([e + 0 * x_n, a - alpha * x_n, b - beta * x_d])
        pm.StudentT("y", nu=nu, mu=pm.math.logsumexp(stacked, axis=0), sigma=sigma, observed=log_loss)
    started = time.perf_counter()
    compiled = nutpie.compile_pymc_model(model)
    compiled_at = time.perf_counter()
    trace = nutpie.sample(compiled, chains=4, tune=1000, draws=1000, seed=seed, progress_bar=False, low_rank_modified_mass_matrix=True)
    done = time.perf_counter()
    names = [n for n in trace.posterior.data_vars if n in ("log_loss_centre", "logit_share_e", "logit_share_a_c", "e", "a", "b", "alpha", "beta", "sigma", "nu")]
    posterior = trace.posterior[names]
    ess = float(az.ess(posterior).to_array().min())
    steps = int(trace.sample_stats["n_steps"].sum())
    result = _sampler_result(done - compiled_at, ess, float(az.rhat(posterior).to_array().max()), steps)
    result["compile_seconds"] = compiled_at - started
    return result


def _sampler_result(seconds, ess, r_hat, steps):
    return {"seconds": seconds, "min_ess_bulk": ess, "max_r_hat": r_hat, "ess_per_second": ess / seconds, "ess_per_1000_gradients": 1000 * ess / steps}


def chinchilla(args) -> dict:
    runs = bs.datasets.load("chinchilla", drop_flagged_outliers=True)
    data = runs.data
    log_n, log_d, log_loss = (np.log(data[c].to_numpy(dtype=float)) for c in ("params", "tokens", "loss"))

    with tempfile.TemporaryDirectory() as cache:
        cold = fresh_process(args.seed, cache)  # an empty cache: traces and compiles everything
        warm = fresh_process(args.seed, cache)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bs.fit(runs, "chinchilla", seed=args.seed, progress=False)
        started = time.perf_counter()
        refit = bs.fit(runs, "chinchilla", seed=args.seed + 1, progress=False)
        refit_seconds = time.perf_counter() - started
    programs = sum(s._advance.signatures for s in engine._SAMPLERS.values())
    result = {
        "machine": _machine(),
        "bayescale_fresh_process_cold_cache": cold,
        "bayescale_fresh_process_warm_cache": warm,
        "bayescale_refit_same_process": {
            **_sampler_result(refit_seconds, refit.diagnostics.min_ess_bulk, refit.diagnostics.max_r_hat, int(refit.idata.sample_stats["n_steps"].sum())),
            "compiled_sampler_programs": programs,
        },
        "numpyro_handwritten": handwritten_numpyro(log_n, log_d, log_loss, args.seed),
        "pymc_nutpie_handwritten": pymc_nutpie(log_n, log_d, log_loss, args.seed, reparameterised=False),
        "pymc_nutpie_bayescale_coordinates": pymc_nutpie(log_n, log_d, log_loss, args.seed, reparameterised=True),
        "huber_bootstrap_warm_start": huber_bootstrap(log_n, log_d, log_loss, args.bootstrap, args.seed, grid_each_refit=False),
        "huber_bootstrap_grid": huber_bootstrap(log_n, log_d, log_loss, args.bootstrap, args.seed, grid_each_refit=True),
    }
    boot = result["huber_bootstrap_grid"]["seconds"]
    rows = [
        ("bayescale fit(), fresh process, cold compile cache", cold["fit_seconds"], cold),
        ("bayescale fit(), fresh process, warm compile cache", warm["fit_seconds"], warm),
        ("bayescale refit, same process (no recompilation)", refit_seconds, result["bayescale_refit_same_process"]),
        ("numpyro hand-written, MCMC defaults", result["numpyro_handwritten"]["seconds"], result["numpyro_handwritten"]),
    ]
    for key, label in (("handwritten", "hand-written model"), ("bayescale_coordinates", "bayescale's coordinates")):
        if result[f"pymc_nutpie_{key}"]:
            rows.append((f"PyMC + nutpie, low-rank mass, {label} (compile excluded)", result[f"pymc_nutpie_{key}"]["seconds"], result[f"pymc_nutpie_{key}"]))
    rows.append((f"Huber + L-BFGS-B, {args.bootstrap} bootstrap refits warm-started from the optimum", result["huber_bootstrap_warm_start"]["seconds"], None))
    rows.append((f"Huber + L-BFGS-B, {args.bootstrap} bootstrap refits each from the {len(GRID)}-start grid", boot, None))
    lines = ["| method | wall (s) | / bootstrap | min bulk ESS | ESS/s | ESS per 1k gradients | max R-hat |", "|---|---|---|---|---|---|---|"]
    for name, seconds, stats in rows:
        extra = f"{stats['min_ess_bulk']:.0f} | {stats['ess_per_second']:.0f} | {stats['ess_per_1000_gradients']:.1f} | {stats['max_r_hat']:.3f}" if stats else "- | - | - | -"
        lines.append(f"| {name} | {seconds:.1f} | {seconds / boot:.2f} | {extra} |")
    lines += [
        "",
        f"Peak memory of the fresh-process fit: {warm['peak_memory_mb']:.0f} MB. Compiled sampler programs after the refit: {programs}.",
        f"95% intervals of alpha: warm-started bootstrap {_interval(result['huber_bootstrap_warm_start']['intervals']['alpha'])}, "
        f"grid bootstrap {_interval(result['huber_bootstrap_grid']['intervals']['alpha'])}. Ratios are to the grid bootstrap. Machine: {result['machine']}.",
    ]
    return _write("chinchilla", result, lines)


def many(args, tasks: int = 64) -> dict:
    """Many small fits: one compute power law per simulated task."""

    rng = np.random.default_rng(args.seed)
    flops = np.geomspace(1e18, 1e21, 10)
    frames, truths = [], {}
    for k in range(tasks):
        alpha = 0.2 + 0.3 * rng.random()
        truth = {"e": np.log(1.5 + rng.random()), "a_c": np.log(0.6) + alpha * np.log(10**19.5), "alpha": alpha}
        frame = bs.datasets.simulate_runs("compute-power-law", truth, flops=flops, sigma=0.01, seed=k).data
        frame["task"] = f"t{k:03d}"
        frames.append(frame)
        truths[f"t{k:03d}"] = alpha
    runs = pd.concat(frames, ignore_index=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bs.fit_many(runs.head(10 * 8), by="task", model="compute-power-law", seed=args.seed, progress=False)  # compile
        started = time.perf_counter()
        fits = bs.fit_many(runs, by="task", model="compute-power-law", seed=args.seed, progress=False)
        batch_seconds = time.perf_counter() - started
        loop_started = time.perf_counter()
        for name in list(truths)[:4]:
            bs.fit(runs[runs["task"] == name], "compute-power-law", seed=args.seed, progress=False)
        loop_per_fit = (time.perf_counter() - loop_started) / 4

    def power_law(log_c, e, log_a, alpha):
        return np.logaddexp(e, log_a - alpha * (log_c - np.log(10**19.5)))

    started = time.perf_counter()
    covered = 0
    for name, alpha in truths.items():
        frame = runs[runs["task"] == name]
        x, y = np.log(frame["flops"].to_numpy()), np.log(frame["loss"].to_numpy())
        estimates = []
        for _ in range(args.bootstrap):
            i = rng.integers(0, len(x), len(x))
            try:
                estimates.append(scipy.optimize.curve_fit(power_law, x[i], y[i], p0=(0.5, -0.5, 0.3), maxfev=5000)[0][2])
            except RuntimeError:
                continue
        low, high = np.quantile(estimates, [0.025, 0.975])
        covered += low < alpha < high
    bootstrap_seconds = time.perf_counter() - started

    converged = sum(f.diagnostics.ok for f in fits.values())
    bayes_covered = 0
    for name, alpha in truths.items():
        row = fits[name].summary().set_index("parameter").loc["alpha"]
        bayes_covered += row["q2.5"] < alpha < row["q97.5"]
    result = {
        "machine": _machine(),
        "tasks": tasks,
        "fit_many": {"seconds": batch_seconds, "fits_per_second": tasks / batch_seconds, "converged": converged, "alpha_95_coverage": bayes_covered / tasks},
        "fit_loop": {"seconds_per_fit": loop_per_fit, "fits_per_second": 1 / loop_per_fit},
        "curve_fit_bootstrap": {"seconds": bootstrap_seconds, "resamples": args.bootstrap, "fits_per_second": tasks / bootstrap_seconds, "alpha_95_coverage": covered / tasks},
    }
    lines = [
        f"{tasks} tasks x 10 points, compute power law. fit_many: 4 chains x (1000 + 1000) per task.",
        "",
        "| method | wall (s) | fits/s | 95% coverage of the true alpha | converged |",
        "|---|---|---|---|---|",
        f"| bayescale fit_many (one batch) | {batch_seconds:.1f} | {tasks / batch_seconds:.2f} | {bayes_covered}/{tasks} | {converged}/{tasks} |",
        f"| loop of bayescale fit() | {loop_per_fit * tasks:.1f} (from 4) | {1 / loop_per_fit:.2f} | - | - |",
        f"| scipy curve_fit + {args.bootstrap} bootstrap resamples | {bootstrap_seconds:.1f} | {tasks / bootstrap_seconds:.2f} | {covered}/{tasks} | - |",
        "",
        f"Machine: {result['machine']}.",
    ]
    return _write("many", result, lines)


#: Run in a fresh interpreter: one hierarchical fit of one simulated world.
HIERARCHICAL_PROCESS = """
import json, resource, sys, time, warnings
import numpy as np
import pandas as pd
import bayescale as bs
from bayescale.datasets.simulate import simulate_sweep
world = int(sys.argv[1])
runs, truth = simulate_sweep(families=12, sizes=6, seeds=3, checkpoints=20, seed=world)
started = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    fit = bs.fit(runs, "chinchilla-hierarchical", seed=world, progress=False)
seconds = time.perf_counter() - started
posterior = fit.idata.posterior
covered, total = 0, 0
checks = [("mu", "coordinate", name, truth["mu"][name]) for name in posterior["coordinate"].values]
checks += [("tau", "pooled_coordinate", name, truth["tau"][name]) for name in posterior["pooled_coordinate"].values]
for site, dim, name, value in checks:
    low, high = np.quantile(posterior[site].sel({dim: name}).values.reshape(-1), [0.025, 0.975])
    covered += bool(low <= value <= high); total += 1
table = fit.summary().set_index("parameter")
d = fit.diagnostics
print(json.dumps({"world": world, "rows": len(runs), "seconds": seconds, "max_r_hat": d.max_r_hat,
                  "min_ess_bulk": d.min_ess_bulk, "divergences": d.divergences,
                  "leapfrog_per_draw": float(fit.idata.sample_stats["n_steps"].mean()),
                  "population_covered": covered, "population_total": total,
                  "sigma_run": [float(table.loc["sigma_run", q]) for q in ("q2.5", "q97.5")], "sigma_run_true": truth["sigma_run"],
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _pymc_prior(prior, value):
    """The log-density of a card's prior at ``value``, as PyMC writes that distribution."""
    import pymc as pm

    a = prior.arguments
    dist = {
        "Normal": lambda: pm.Normal.dist(mu=a["loc"], sigma=a["scale"]),
        "LogNormal": lambda: pm.LogNormal.dist(mu=a["loc"], sigma=a["scale"]),
        "HalfNormal": lambda: pm.HalfNormal.dist(sigma=a["scale"]),
    }[prior.distribution]()
    return pm.logp(dist, value)


def pymc_nutpie_hierarchical(runs, seed: int, *, marginalised: bool):
    """The chinchilla-hierarchical card written in PyMC and sampled by nutpie (low-rank mass
    matrix), 4 chains x (1000 + 1000) at the card's target acceptance: the same priors,
    population and likelihood.

    Families are non-centred (``u = mu + spread * z``, PyMC's usual idiom). With
    ``marginalised`` the run effect is integrated out as bayescale does (a Potential with the
    Sherman-Morrison form); otherwise each run has an explicit non-centred offset, which is how
    a PyMC user would write it (the same posterior for every other parameter). ``None`` where
    PyMC or nutpie is not installed.
    """
    try:
        import nutpie
        import pymc as pm
        import pytensor.tensor as pt
    except ImportError:
        return None
    from bayescale.hierarchy import TAU_PRIOR_SHAPE, layout_of
    from bayescale.model import centre_of

    spec = bs.ModelSpec.load("chinchilla-hierarchical")
    layout = layout_of(spec)
    data = runs.data
    centre = centre_of(runs, spec)
    x_n = np.log(data["params"].to_numpy()) - centre["params"]
    x_d = np.log(data["tokens"].to_numpy()) - centre["tokens"]
    log_loss = np.log(data["loss"].to_numpy())
    family, run = runs.family_codes(), runs.run_ids()
    families, num_runs = int(family.max()) + 1, int(run.max()) + 1
    pooled = [layout.names[layout.varying[j]] for j in layout.pooled]
    assert list(layout.names) == ["log_loss_centre", "logit_share_e", "logit_share_a_c", "log_alpha", "log_beta"]
    assert pooled == ["log_loss_centre", "logit_share_e", "logit_share_a_c"] and len(layout.varying) == 5

    def parameters(u):
        """Coordinates (last axis) -> e, a_c, b_c, alpha, beta and the log Jacobian (coordinates.py)."""
        log_sigmoid = lambda z: -pt.softplus(-z)  # noqa: E731
        total, z_e, z_a = u[..., 0], u[..., 1], u[..., 2]
        rest = total + log_sigmoid(-z_e)
        return total + log_sigmoid(z_e), rest + log_sigmoid(z_a), rest + log_sigmoid(-z_a), pt.exp(u[..., 3]), pt.exp(u[..., 4]), u[..., 3] + u[..., 4]

    with pm.Model() as model:
        mu = pm.Flat("mu", shape=5)
        e, a_c, b_c, alpha, beta, log_jacobian = parameters(mu)
        priors = spec.priors
        pm.Potential("card_priors", sum(_pymc_prior(priors[n], v) for n, v in (("e", e), ("a_c", a_c), ("b_c", b_c), ("alpha", alpha), ("beta", beta))) + log_jacobian)
        tau = pm.Gamma("tau", alpha=TAU_PRIOR_SHAPE, beta=TAU_PRIOR_SHAPE / layout.tau_scale, shape=3)
        spread = pt.concatenate([tau, pt.as_tensor(layout.fixed_spread[3:])])
        z = pm.Normal("z", 0.0, 1.0, shape=(families, 5))
        e, a_c, b_c, alpha, beta, _ = parameters(mu[None, :] + spread[None, :] * z)
        terms = pt.stack([e[family], a_c[family] - alpha[family] * x_n, b_c[family] - beta[family] * x_d])
        mean = pm.math.logsumexp(terms, axis=0)
        sigma = pm.HalfNormal("sigma", sigma=priors["sigma"].arguments["scale"])
        sigma_run = pm.HalfNormal("sigma_run", sigma=priors["sigma_run"].arguments["scale"])
        if marginalised:
            member = np.zeros((num_runs, len(data)))
            member[run, np.arange(len(data))] = 1.0
            count = member.sum(axis=1)
            residual = log_loss - mean
            total, squares = pt.dot(member, residual), pt.dot(member, residual**2)
            var, var_run = sigma**2, sigma_run**2
            quadratic = (squares - var_run / (var + count * var_run) * total**2) / var
            pm.Potential("log_likelihood", -0.5 * pt.sum(quadratic + count * pt.log(2 * np.pi * var) + pt.log1p(count * var_run / var)))
        else:
            offset = pm.Normal("run_offset_raw", 0.0, 1.0, shape=num_runs)
            pm.Normal("log_loss", mu=mean + sigma_run * offset[run], sigma=sigma, observed=log_loss)
    started = time.perf_counter()
    compiled = nutpie.compile_pymc_model(model)
    compiled_at = time.perf_counter()
    # The card's target acceptance (0.99), as bayescale uses it.
    trace = nutpie.sample(compiled, chains=4, tune=1000, draws=1000, seed=seed, progress_bar=False, low_rank_modified_mass_matrix=True, target_accept=spec.target_accept)
    done = time.perf_counter()
    posterior = trace.posterior[["mu", "tau", "z", "sigma", "sigma_run"]]
    ess = float(az.ess(posterior).to_array().min())
    steps = int(trace.sample_stats["n_steps"].sum())
    result = _sampler_result(done - compiled_at, ess, float(az.rhat(posterior).to_array().max()), steps)
    result.update(compile_seconds=compiled_at - started, divergences=int(trace.sample_stats["diverging"].sum()))
    return result


def hierarchical(args) -> dict:
    """The issue-3 workload, one fresh process per simulated world (warm compilation cache after the first)."""
    from bayescale.datasets.simulate import simulate_sweep

    worlds, peers = [], []
    for world in range(args.worlds):
        out = subprocess.run([sys.executable, "-c", HIERARCHICAL_PROCESS, str(args.seed + world)], capture_output=True, text=True, check=True)
        worlds.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(worlds[-1], flush=True)
        runs, _ = simulate_sweep(families=12, sizes=6, seeds=3, checkpoints=20, seed=args.seed + world)
        for marginalised in (True, False):
            peer = pymc_nutpie_hierarchical(runs, args.seed + world, marginalised=marginalised)
            if peer is not None:
                peers.append({"world": args.seed + world, "run_effect": "integrated out" if marginalised else "explicit offsets", **peer})
                print(peers[-1], flush=True)
    result = {"machine": _machine(), "worlds": worlds, "pymc_nutpie": peers}
    lines = [
        "12 families x 6 sizes (2e7-6e8 params, 20 tokens/param) x 3 seeds x 20 checkpoints = 4,320 rows; "
        "card chinchilla-hierarchical with its defaults (4 chains x 1000 + 1000, target_accept from the card); "
        "one fresh process per world (the first compiles).",
        "",
        "| world | wall (s) | max R-hat | min bulk ESS | divergences | leapfrog steps / draw | population 95% coverage | sigma_run 95% (truth) | peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for w in worlds:
        lines.append(
            f"| {w['world']} | {w['seconds']:.0f} | {w['max_r_hat']:.3f} | {w['min_ess_bulk']:.0f} | {w['divergences']} | "
            f"{w['leapfrog_per_draw']:.0f} | {w['population_covered']}/{w['population_total']} | "
            f"{w['sigma_run'][0]:.4f}-{w['sigma_run'][1]:.4f} ({w['sigma_run_true']}) | {w['peak_mb']:.0f} |"
        )
    if peers:
        ours = {w["world"]: w for w in worlds}
        lines += [
            "",
            "The same card in PyMC, sampled by nutpie (low-rank mass matrix, 4 chains x (1000 + 1000), the card's target_accept 0.99), same data, same run "
            "(`pymc_nutpie_hierarchical`). Wall excludes nutpie's compilation (given separately); bayescale's wall above "
            "includes everything in a fresh process. ESS/s: minimum bulk ESS over all sampled parameters per second of wall.",
            "",
            "| world | run effect | wall (s) | compile (s) | max R-hat | min bulk ESS | ESS/s | ESS / 1000 gradients | divergences | bayescale ESS/s | bayescale speed-up (ESS/s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for peer in peers:
            mine = ours[peer["world"]]
            our_rate = mine["min_ess_bulk"] / mine["seconds"]
            lines.append(
                f"| {peer['world']} | {peer['run_effect']} | {peer['seconds']:.0f} | {peer['compile_seconds']:.0f} | {peer['max_r_hat']:.3f} | "
                f"{peer['min_ess_bulk']:.0f} | {peer['ess_per_second']:.1f} | {peer['ess_per_1000_gradients']:.1f} | {peer['divergences']} | "
                f"{our_rate:.1f} | {our_rate / peer['ess_per_second']:.2g}x |"
            )
    lines += ["", f"Machine: {result['machine']}."]
    return _write("hierarchical", result, lines)


def borrowing(args) -> dict:
    """A family with two sizes, predicted pooled and alone (module docstring)."""
    from bayescale.datasets.simulate import simulate_sweep
    from bayescale.laws import get_law

    law = get_law("chinchilla")
    rows = []
    for world in range(args.seed, args.seed + args.worlds):
        runs, truth = simulate_sweep(families=6, sizes=6, seeds=3, checkpoints=10, seed=world)
        data = runs.data
        target = "family_00"
        sizes = np.sort(data.loc[data["family"] == target, "params"].unique())
        kept = data[(data["family"] != target) | (data["params"] <= sizes[1])]
        final = data[(data["family"] == target) & data["is_final"]]
        largest_kept = final.loc[final["params"] == sizes[1], "flops"].max()
        held = final[(final["flops"] >= 10 * largest_kept) & (final["flops"] <= 100 * largest_kept)].drop_duplicates("params")
        x = {k: np.log(held[k].to_numpy()) - truth["centre"][k] for k in law.inputs}
        expected = np.exp(np.asarray(law.log_loss(truth["theta"][target], x)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            started = time.perf_counter()
            pooled = bs.fit(kept, "chinchilla-hierarchical", seed=world, progress=False)
            pooled_seconds = time.perf_counter() - started
            started = time.perf_counter()
            alone = bs.fit(kept[kept["family"] == target].drop(columns="family"), "chinchilla", seed=world, progress=False)
            alone_seconds = time.perf_counter() - started
        for name, fitted, seconds, family in (("pooled", pooled, pooled_seconds, target), ("alone", alone, alone_seconds, None)):
            frame = fitted.predict(params=held["params"].to_numpy(), tokens=held["tokens"].to_numpy(), family=family)
            for j, truth_loss in enumerate(expected):
                rows.append({
                    "world": world, "method": name, "compute_ratio": float(held["flops"].iloc[j] / largest_kept),
                    "truth": float(truth_loss), "q50": float(frame["q50"].iloc[j]),
                    "covered_95": bool(frame["q2.5"].iloc[j] <= truth_loss <= frame["q97.5"].iloc[j]),
                    "width_95": float(frame["q97.5"].iloc[j] - frame["q2.5"].iloc[j]),
                    "fit_seconds": seconds, "r_hat": fitted.diagnostics.max_r_hat, "divergences": fitted.diagnostics.divergences,
                })
        print(rows[-1], flush=True)
    table = []
    for name in ("pooled", "alone"):
        part = [r for r in rows if r["method"] == name]
        errors = [abs(r["q50"] / r["truth"] - 1) for r in part]
        table.append({
            "method": name, "points": len(part), "median_abs_rel_error": float(np.median(errors)),
            "max_abs_rel_error": float(np.max(errors)), "coverage_95": sum(r["covered_95"] for r in part) / len(part),
            "mean_width_95": float(np.mean([r["width_95"] for r in part])),
            "max_r_hat": float(max(r["r_hat"] for r in part)),
            "divergences": int(sum({r["world"]: r["divergences"] for r in part}.values())),
        })
    result = {"machine": _machine(), "rows": rows, "summary": table}
    lines = [
        f"6 families x 6 sizes x 3 seeds x 10 checkpoints, {args.worlds} worlds; family_00 keeps its two smallest sizes; "
        "its expected loss at the held-out sizes 10-100x its largest kept compute (final checkpoints) is the target.",
        "",
        "| method | targets | median abs. rel. error | max abs. rel. error | 95% coverage | mean 95% width (nats) | max R-hat | divergences |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['method']} | {r['points']} | {100 * r['median_abs_rel_error']:.2f}% | {100 * r['max_abs_rel_error']:.2f}% | "
            f"{r['coverage_95']:.2f} | {r['mean_width_95']:.3f} | {r['max_r_hat']:.3f} | {r['divergences']} |"
        )
    lines += ["", "pooled: chinchilla-hierarchical on all families; alone: the chinchilla card on family_00's rows only.", f"Machine: {result['machine']}."]
    return _write("borrowing", result, lines)


def misfitting_families(path: Path = SHARED_DATA / "misfitting_losses.csv"):
    """(Mis)Fitting final losses as three families (peak learning rates), >= 5 tokens/param.

    Runs shorter than 5 tokens per parameter (down to 1.8) are dropped: a few hundred steps
    are warm-up transients, not the regime the Chinchilla law describes (they left 12-15%
    errors on fitted sizes). Rows repeated verbatim (one run logged by two sweeps) are dropped.
    """

    raw = pd.read_csv(path)
    final = raw[raw["is_final"] & raw["peak_lr"].isin([0.001, 0.002, 0.004])]
    data = pd.DataFrame({"family": "lr" + final["peak_lr"].map("{:g}".format), "params": final["params"], "tokens": final["tokens"], "loss": final["loss"]})
    return data[data["tokens"] >= 5 * data["params"]].drop_duplicates().reset_index(drop=True)


def gemstones_families(path: Path = SHARED_DATA / "gemstones_losses.csv"):
    """Gemstones checkpoints as three families (schedules); ``cool_begin`` repeats ``hot`` and is left out."""

    raw = pd.read_csv(path)
    part = raw[raw["regime"].isin(["hot", "cool_end", "lr_ablation_hot"])]
    return pd.DataFrame({"family": part["regime"], "params": part["params"], "tokens": part["tokens"], "step": part["step"], "loss": part["loss"]}).reset_index(drop=True)


#: Extrapolation bands scored by ``real-pooling``: held-out size over the largest kept size.
SIZE_BANDS = ((1, 4), (4, 20))


def real_pooling(args) -> dict:
    """Leave-one-family-out backtests on real suites, pooled vs alone (module docstring)."""
    suites = {"misfitting": misfitting_families, "gemstones": gemstones_families}
    rows = []
    for suite, load in suites.items():
        data = load()
        for target in sorted(data["family"].unique()):
            for method, card, part in (("pooled", "chinchilla-hierarchical", data), ("alone", "chinchilla", data[data["family"] == target])):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    started = time.perf_counter()
                    result = bs.backtest(part, card, family=target, keep_sizes=2, seed=args.seed, progress=False)
                    seconds = time.perf_counter() - started
                flagged = sorted({w.category.__name__ for w in caught if issubclass(w.category, (bs.SamplerWarning, bs.ModelWarning))})
                for low, high in SIZE_BANDS:
                    band = result.rows[(result.rows["params_ratio"] >= low) & (result.rows["params_ratio"] < high)]
                    if len(band):
                        rows.append({
                            "suite": suite, "family": target, "method": method, "band": f"{low}-{high}x", "n": len(band),
                            "median_abs_rel_error": float(band["abs_rel_error"].median()), "max_abs_rel_error": float(band["abs_rel_error"].max()),
                            "coverage_95": float(band["covered_95"].mean()), "coverage_90": float(band["covered_90"].mean()),
                            "mean_rel_width_95": float(band["rel_width_95"].mean()), "seconds": seconds,
                            "divergences": result.fit.diagnostics.divergences, "max_r_hat": result.fit.diagnostics.max_r_hat,
                            "warnings": ", ".join(flagged) or "none",
                        })
                        print(rows[-1], flush=True)
    result = {"machine": _machine(), "rows": rows}
    lines = [
        "Leave one family out: the family keeps its 2 smallest sizes; rows are its held-out observations by size",
        "ratio to its largest kept size. pooled: chinchilla-hierarchical on all three families; alone: chinchilla on that family only.",
        "",
        "| suite | family | sizes held out | method | rows | median abs. rel. error | max | 95% coverage | 90% coverage | 95% width / median | divergences | max R-hat | warnings | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['suite']} | {r['family']} | {r['band']} | {r['method']} | {r['n']} | {100 * r['median_abs_rel_error']:.2f}% | "
            f"{100 * r['max_abs_rel_error']:.2f}% | {r['coverage_95']:.2f} | {r['coverage_90']:.2f} | {r['mean_rel_width_95']:.3f} | "
            f"{r['divergences']} | {r['max_r_hat']:.3f} | {r['warnings']} | {r['seconds']:.0f} |"
        )
    lines += ["", f"Machine: {result['machine']}."]
    return _write("real_pooling", result, lines)


def design(args) -> dict:
    """Designed runs vs a 20-tokens/param grid vs random, at equal compute (module docstring)."""

    from bayescale.datasets.simulate import SWEEP_TYPICAL
    from bayescale.laws import get_law

    natural = SWEEP_TYPICAL["chinchilla"]
    truth = {"e": np.log(natural["E"]), "a_c": np.log(natural["A"]), "alpha": natural["alpha"], "b_c": np.log(natural["B"]), "beta": natural["beta"]}
    target = {"params": 7e10, "tokens": 1.4e12}
    expected = float(np.exp(get_law("chinchilla").log_loss(truth, {k: np.log(v) for k, v in target.items()})))
    start_n = np.repeat([2e7, 5e7, 1e8], 2)
    start = {"params": start_n, "tokens": start_n * np.tile([10.0, 40.0], 3)}
    sizes = np.geomspace(5e7, 2e9, 8)
    grid_n, grid_r = np.meshgrid(sizes, [5.0, 10.0, 20.0, 40.0, 80.0])
    candidates = pd.DataFrame({"params": grid_n.ravel(), "tokens": (grid_n * grid_r).ravel()})
    usual = pd.DataFrame({"params": sizes[:7], "tokens": 20.0 * sizes[:7]})
    # A wider menu than the grid's neighbourhood: 11 sizes 2e7-2e9 at 2.5-320 tokens/param
    # (Chinchilla's IsoFLOP sweeps span a similar range of ratios).
    wide_n, wide_r = np.meshgrid(np.geomspace(2e7, 2e9, 11), [2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0])
    wide = pd.DataFrame({"params": wide_n.ravel(), "tokens": (wide_n * wide_r).ravel()})
    budget = float((6.0 * usual["params"] * usual["tokens"]).sum())
    rows = []
    for world in range(args.seed, args.seed + args.worlds):
        rng = np.random.default_rng(world)

        def misfit(runs):
            """Loss times exp(the law's misfit at each configuration): fixed per world and
            configuration (a seed of its own per (world, params, tokens)), so every seed of a
            configuration shares it; none with --misfit 0."""
            offset = [np.random.default_rng([world, int(n), int(d)]).normal(0.0, args.misfit) for n, d in zip(runs["params"], runs["tokens"])]
            return runs.assign(loss=runs["loss"] * np.exp(offset))

        initial = misfit(bs.datasets.simulate_runs("chinchilla", truth, **start, sigma=0.01, seed=1000 + world).data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            first = bs.fit(initial, "chinchilla", seed=world, progress=False)
            started = time.perf_counter()
            suggestion = bs.suggest_runs(first, candidates, budget, target, seed=world)
            design_seconds = time.perf_counter() - started
            repeated = bs.suggest_runs(first, candidates, budget, target, max_repeats=3, seed=world)
            widened = bs.suggest_runs(first, wide, budget, target, seed=world)
            # Random: candidates in random order, each taken if it still fits the budget.
            shuffled, spent, taken = candidates.sample(frac=1.0, random_state=world), 0.0, []
            for index, run in shuffled.iterrows():
                if spent + 6.0 * run["params"] * run["tokens"] <= budget:
                    spent += 6.0 * run["params"] * run["tokens"]
                    taken.append(index)
            outcome = lambda added: misfit(bs.datasets.simulate_runs(  # noqa: E731
                "chinchilla", truth, params=added["params"].to_numpy(), tokens=added["tokens"].to_numpy(), sigma=0.01, seed=int(rng.integers(1 << 30))
            ).data)
            # Three rounds: a third of the budget, train (simulate) and refit, and again.
            rounds, left, pool, current = [], budget, candidates, first
            for step in range(3):
                chosen = bs.suggest_runs(current, pool, left / (3 - step), target, seed=world)
                rounds.append(outcome(chosen.selected))
                left, pool = left - chosen.spent, pool.drop(index=chosen.selected.index)
                if step < 2:
                    current = bs.fit(pd.concat([initial, *rounds], ignore_index=True), "chinchilla", seed=world, progress=False)
            strategies = {
                "designed": outcome(suggestion.selected),
                "designed, 3 rounds": pd.concat(rounds, ignore_index=True),
                "grid": outcome(usual),
                "random": outcome(shuffled.loc[taken]),
            }
            # Drawn last, so the other strategies' outcomes are those of earlier runs of this benchmark.
            strategies["designed, up to 3 seeds each"] = outcome(repeated.selected)  # a repeated row is another seed: its own noise
            strategies["designed, wider menu"] = outcome(widened.selected)
            designs = {"designed": suggestion, "designed, up to 3 seeds each": repeated, "designed, wider menu": widened}
            for name, new in strategies.items():
                both = pd.concat([initial, new], ignore_index=True)
                refit = bs.fit(both, "chinchilla", seed=world, progress=False)
                frame = refit.predict(**target)
                rows.append({
                    "world": world, "strategy": name, "runs": len(new), "spent_fraction": float((6.0 * new["params"] * new["tokens"]).sum() / budget),
                    "width_95": float(frame["q97.5"].iloc[0] - frame["q2.5"].iloc[0]), "abs_rel_error": abs(float(frame["q50"].iloc[0]) / expected - 1.0),
                    "rel_error": float(frame["q50"].iloc[0]) / expected - 1.0, "covered_95": bool(frame["q2.5"].iloc[0] <= expected <= frame["q97.5"].iloc[0]),
                    "predicted_width_95": designs[name].width_95_after if name in designs else None,
                    "width_before": suggestion.width_95_before, "design_seconds": design_seconds, "max_r_hat": refit.diagnostics.max_r_hat,
                })
                print(rows[-1], flush=True)
    result = {"machine": _machine(), "budget_flops": budget, "target": target, "expected_loss": expected, "misfit": args.misfit, "rows": rows}
    return _write_design(result, args.worlds)


def _write_design(result: dict, worlds: int) -> dict:
    """The design workload's summary per strategy, added to ``result`` and written out."""
    rows, table = result["rows"], []
    grid_width = {r["world"]: r["width_95"] for r in rows if r["strategy"] == "grid"}
    for name in ("designed", "designed, up to 3 seeds each", "designed, 3 rounds", "designed, wider menu", "grid", "random"):
        part = [r for r in rows if r["strategy"] == name]
        ratios = [r["width_95"] / grid_width[r["world"]] for r in part]
        table.append({
            "strategy": name, "worlds": len(part), "mean_runs": float(np.mean([r["runs"] for r in part])),
            "mean_spent_fraction": float(np.mean([r["spent_fraction"] for r in part])),
            "median_width_95": float(np.median([r["width_95"] for r in part])),
            "median_width_ratio_to_grid": float(np.median(ratios)), "max_width_ratio_to_grid": float(np.max(ratios)),
            "narrower_than_grid": f"{sum(ratio < 1.0 for ratio in ratios)}/{len(part)}",
            "median_abs_rel_error": float(np.median([r["abs_rel_error"] for r in part])),
            "coverage_95": f"{sum(r['covered_95'] for r in part)}/{len(part)}",
        })
    result["summary"], misfit = table, result["misfit"]
    lines = [
        f"{worlds} simulated worlds; budget {result['budget_flops']:.3g} FLOP (the 7-size grid at 20 tokens/param); target: loss at 70B params, 1.4T tokens "
        f"(truth {result['expected_loss']:.4f}); chinchilla card refitted on the 6 starting runs plus each strategy's runs; seed noise 1% of the loss"
        + (f", and the law's misfit, sd {100 * misfit:.2g}% per configuration, shared by its seeds." if misfit else "."),
        "",
        "| strategy | runs (mean) | budget spent | median 95% width (nats) | width / grid's (median, max) | narrower than grid's | median abs. rel. error | truth in 95% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['strategy']} | {r['mean_runs']:.1f} | {100 * r['mean_spent_fraction']:.0f}% | {r['median_width_95']:.3f} | "
            f"{r['median_width_ratio_to_grid']:.2f}, {r['max_width_ratio_to_grid']:.2f} | {r['narrower_than_grid']} | {100 * r['median_abs_rel_error']:.2f}% | {r['coverage_95']} |"
        )
    lines += ["", f"Machine: {result['machine']}."]
    return _write("design_misfit" if misfit else "design", result, lines)


def emergence_design(args) -> dict:
    """Models chosen by suggest_runs for a task's emergence threshold vs the next sizes up and
    random models, at equal compute (module docstring)."""
    from bayescale.links import get_link

    first_models = np.logspace(18.5, 20.5, 5)
    candidates = pd.DataFrame({"flops": np.logspace(19.0, 22.0, 13)})  # quarter decades
    usual = candidates[np.isin(np.round(np.log10(candidates["flops"]), 2), [21.0, 21.5, 22.0])]  # the next sizes up: 1e21, 3.2e21, 1e22
    budget = float(usual["flops"].sum())
    target = {"kind": "emergence", "task": "target"}
    rows = []
    for world in range(args.seed, args.seed + args.worlds):
        rng = np.random.default_rng(world)
        # Where the target task rises is unknown to the user: its midpoint 1e21.5-1e22.5 FLOP.
        truth = dict(task="target", midpoint_flops=10.0 ** rng.uniform(21.5, 22.5), slope=rng.uniform(2.0, 4.0), chance=0.25, ceiling=0.8)
        tasks = [
            dict(task="early", midpoint_flops=1e19, slope=1.5, chance=0.25, ceiling=0.9),
            dict(task="middle", midpoint_flops=3e20, slope=2.0, chance=0.25, ceiling=0.85),
            truth,
        ]
        # The threshold bayescale.emergence reports by default: chance + 10% of the headroom.
        threshold = float(10.0 ** get_link("sigmoid").solve(0.1, np.log10(truth["midpoint_flops"]), truth["slope"]))

        def evaluate(flops, run):
            # Every new model is a run of its own (seed), though its compute may equal an earlier one's.
            scores = bs.datasets.simulate_evaluations(tasks, flops, n_items=1000, concentration=300.0, seed=int(rng.integers(1 << 30))).data
            return scores.assign(seed=run)

        initial = evaluate(first_models, 0)
        # Every candidate's scores are drawn once, so strategies that pick the same model see
        # the same scores (common random numbers: the comparison is of the choices, not the noise).
        scored = evaluate(candidates["flops"].to_numpy(), 1)
        affordable = rng.permutation(len(candidates))
        spent = np.cumsum(candidates["flops"].to_numpy()[affordable])
        random = candidates.iloc[affordable[spent <= budget]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            first = bs.fit(initial, "downstream-sigmoid", seed=world, progress=False)
            started = time.perf_counter()
            suggestion = bs.suggest_runs(first, candidates, budget, target, seed=world)
            seconds = time.perf_counter() - started
            for name, added in (("designed", suggestion.selected), ("next sizes up", usual), ("random", random)):
                refit = bs.fit(pd.concat([initial, scored[scored["flops"].isin(added["flops"])]], ignore_index=True), "downstream-sigmoid", seed=world, progress=False)
                row = bs.emergence(refit).query("task == 'target' and quantity == 'threshold_flops'").iloc[0]
                rows.append({
                    "world": world, "strategy": name, "threshold_flops": threshold, "models": len(added), "flops": [float(v) for v in added["flops"]],
                    "spent_fraction": float(added["flops"].sum() / budget),
                    "width_decades": float(np.log10(row["q97.5"] / row["q2.5"])), "log10_error": float(np.log10(row["q50"] / threshold)),
                    "covered_95": bool(row["q2.5"] <= threshold <= row["q97.5"]), "width_before": suggestion.width_95_before,
                    "predicted_width": suggestion.width_95_after if name == "designed" else None,
                    "design_seconds": seconds if name == "designed" else None,
                    "max_r_hat": refit.diagnostics.max_r_hat, "divergences": refit.diagnostics.divergences,
                })
                print(rows[-1], flush=True)
    return _write_emergence_design({"machine": _machine(), "budget_flops": budget, "rows": rows}, args.worlds)


def _write_emergence_design(result: dict, worlds: int) -> dict:
    """Summary table of the emergence-design workload from its rows (so a table can be rebuilt from the JSON)."""
    rows = result["rows"]
    usual_width = {r["world"]: r["width_decades"] for r in rows if r["strategy"] == "next sizes up"}
    table = []
    for name in ("designed", "next sizes up", "random"):
        part = [r for r in rows if r["strategy"] == name]
        ratios = [r["width_decades"] / usual_width[r["world"]] for r in part]
        table.append({
            "strategy": name, "mean_models": float(np.mean([r["models"] for r in part])),
            "mean_spent_fraction": float(np.mean([r["spent_fraction"] for r in part])),
            "median_width_decades": float(np.median([r["width_decades"] for r in part])),
            "median_width_ratio": float(np.median(ratios)), "max_width_ratio": float(np.max(ratios)),
            "narrower": f"{sum(ratio < 1 for ratio in ratios)}/{len(part)}" if name != "next sizes up" else "-",
            "median_abs_log10_error": float(np.median([abs(r["log10_error"]) for r in part])),
            "coverage_95": f"{sum(r['covered_95'] for r in part)}/{len(part)}",
        })
    result["summary"] = table
    designed = [r for r in rows if r["strategy"] == "designed"]
    lines = [
        f"{worlds} simulated worlds; downstream-sigmoid fitted to 5 models (3e18-3e20 FLOP) on 3 tasks (1,000 items, over-dispersed), "
        "where the target task has not risen: its midpoint is drawn from 1e21.5-1e22.5 FLOP and its slope from 2-4 per decade in each world "
        f"(thresholds, chance + 10% of the headroom: {min(r['threshold_flops'] for r in designed):.2g}-{max(r['threshold_flops'] for r in designed):.2g} FLOP). "
        f"Budget {result['budget_flops']:.3g} FLOP: the next sizes up (1e21, 3.2e21, 1e22); suggest_runs chooses from 13 models 1e19-1e22 "
        "(quarter decades), random takes them in random order while the budget lasts; refit on each.",
        "",
        "| strategy | models (mean) | budget spent | median 95% width (decades) | width / next sizes' (median, max) | narrower than next sizes' | median abs. error (decades) | truth in 95% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['strategy']} | {r['mean_models']:.1f} | {100 * r['mean_spent_fraction']:.0f}% | {r['median_width_decades']:.2f} | "
            f"{r['median_width_ratio']:.2f}, {r['max_width_ratio']:.2f} | {r['narrower']} | {r['median_abs_log10_error']:.2f} | {r['coverage_95']} |"
        )
    ratio = [r["width_decades"] / r["predicted_width"] for r in designed]
    lines += [
        "",
        f"The designed batch's refitted width was a median {np.median(ratio):.2f}x the width suggest_runs expected (range {min(ratio):.2f}-{max(ratio):.2f}); "
        f"suggest_runs took a median {np.median([r['design_seconds'] for r in designed]):.1f} s.",
        "",
        f"Machine: {result['machine']}.",
    ]
    return _write("emergence_design", result, lines)


def _pythia_baselines(fitted, held):
    """Point predictions of held-out accuracies: the largest fitted model's (persistence), and a
    line in log10 compute through the two largest fitted models of the family and task."""
    persistence, trend = [], []
    for _, row in held.iterrows():
        part = fitted[(fitted["family"] == row["family"]) & (fitted["task"] == row["task"])].sort_values("flops")
        (x0, y0), (x1, y1) = [(np.log10(r["flops"]), r["correct"] / r["n_items"]) for _, r in part.tail(2).iterrows()]
        persistence.append(y1)
        trend.append(float(np.clip(y1 + (y1 - y0) / (x1 - x0) * (np.log10(row["flops"]) - x1), 0.0, 1.0)))
    return np.asarray(persistence), np.asarray(trend)


def _emergent_world(seed: int):
    rng = np.random.default_rng(seed)
    tasks = [
        dict(task=f"t{i}", midpoint_flops=10 ** rng.uniform(21.5, 24), slope=rng.uniform(3, 10), chance=float(rng.choice([0.0, 0.25, 0.5])), ceiling=rng.uniform(0.7, 0.95))
        for i in range(6)
    ]
    frames = []
    for j in range(6):
        flops = np.logspace(19 + rng.uniform(0, 1), 23.5 + rng.uniform(0, 1), 8)
        runs = bs.datasets.simulate_evaluations(tasks, flops, families={f"f{j}": rng.normal(0, 0.3)}, n_items=500, concentration=300, seed=100 * seed + j)
        frames.append(runs.data)
    return pd.concat(frames, ignore_index=True)


def downstream(args) -> dict:
    """Pythia backtest and simulated emergent worlds (module docstring)."""
    rows = []
    data = bs.datasets.load("pythia_evals").data
    data = data[data["is_final"]]
    cutoff = 2.79e21  # between the 1.4B (2.5e21 FLOP) and 2.8B (5.0e21) models
    started = time.perf_counter()
    result = bs.backtest(data, "downstream-sigmoid", cutoff_flops=cutoff, seed=args.seed, num_samples=2000, progress=False)
    seconds = time.perf_counter() - started
    held = data[data["flops"] >= cutoff].reset_index(drop=True)
    predicted = result.rows.set_index(["family", "task", "flops"]).loc[list(zip(held["family"], held["task"], held["flops"].astype(float)))]
    observed = (held["correct"] / held["n_items"]).to_numpy()
    persistence, trend = _pythia_baselines(data[data["flops"] < cutoff], held)
    table = pd.DataFrame({"task": held["task"], "bayes": np.abs(predicted["q50"].to_numpy() - observed), "persistence": np.abs(persistence - observed), "trend": np.abs(trend - observed), "covered_90": predicted["covered_90"].to_numpy(), "width_90": (predicted["q95"] - predicted["q5"]).to_numpy()})
    for task, part in [("all", table), *table.groupby("task")]:
        rows.append({"workload": "pythia", "task": task, "n": len(part), "mae": float(part["bayes"].mean()), "mae_persistence": float(part["persistence"].mean()), "mae_trend": float(part["trend"].mean()), "coverage_90": float(part["covered_90"].mean()), "mean_width_90": float(part["width_90"].mean())})
    diagnostics = result.fit.diagnostics
    pythia = {"seconds": seconds, "divergences": diagnostics.divergences, "max_r_hat": diagnostics.max_r_hat, "min_ess_bulk": diagnostics.min_ess_bulk, "min_ess_tail": diagnostics.min_ess_tail}
    print(pythia, flush=True)
    worlds = []
    for world in range(args.worlds):
        data = _emergent_world(world)
        started = time.perf_counter()
        result = bs.backtest(data, "downstream-sigmoid", cutoff_flops=2e22, seed=args.seed, progress=False)
        table = bs.emergence(result.fit)
        ordered = bool(np.all(np.diff(table[["q2.5", "q5", "q25", "q50", "q75", "q95", "q97.5"]].to_numpy(), axis=1) >= 0))
        summary = result.summary().iloc[0]
        worlds.append({
            "world": world, "n": int(summary["n"]), "mae": float(summary["mean_abs_error"]), "coverage_90": float(summary["coverage_90"]),
            "coverage_95": float(summary["coverage_95"]), "mean_width_95": float(summary["mean_width_95"]), "ordered_emergence": ordered,
            "seconds": time.perf_counter() - started, "divergences": result.fit.diagnostics.divergences, "max_r_hat": result.fit.diagnostics.max_r_hat,
        })
        print(worlds[-1], flush=True)
    out = {"machine": _machine(), "pythia": {**pythia, "rows": rows}, "emergent_worlds": worlds}
    lines = [
        "Pythia (bundled pythia_evals, final checkpoints): fit the models up to 1.4B, predict 2.8B, 6.9B, 12B (both suites).",
        f"downstream-sigmoid, 4 chains x 2000 draws: {pythia['seconds']:.0f} s, {pythia['divergences']} divergences, max R-hat {pythia['max_r_hat']:.3f}, "
        f"min bulk/tail ESS {pythia['min_ess_bulk']:.0f}/{pythia['min_ess_tail']:.0f}.",
        "",
        "| task | held out | mean abs. error | persistence (1.4B) | log-linear trend | 90% coverage | mean 90% width |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['task']} | {r['n']} | {r['mae']:.3f} | {r['mae_persistence']:.3f} | {r['mae_trend']:.3f} | {r['coverage_90']:.2f} | {r['mean_width_90']:.3f} |" for r in rows]
    lines += [
        "",
        "Simulated emergent worlds (6 families, 6 steep tasks, fitted below 2e22 FLOP, everything above predicted):",
        "",
        "| world | held out | mean abs. error | 90% coverage | 95% coverage | mean 95% width | ordered emergence intervals | divergences | max R-hat | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {w['world']} | {w['n']} | {w['mae']:.3f} | {w['coverage_90']:.2f} | {w['coverage_95']:.2f} | {w['mean_width_95']:.3f} | {w['ordered_emergence']} | {w['divergences']} | {w['max_r_hat']:.3f} | {w['seconds']:.0f} |"
        for w in worlds
    ]
    lines += ["", f"Machine: {out['machine']}."]
    return _write("downstream", out, lines)


def _task_world(tasks: int, seed: int):
    rng = np.random.default_rng(seed)
    truths = [
        dict(task=f"t{i:03d}", midpoint_flops=10 ** rng.uniform(19.5, 23.5), slope=rng.uniform(0.5, 4), chance=float(rng.choice([0.0, 0.25, 0.5])), ceiling=rng.uniform(0.6, 0.95))
        for i in range(tasks)
    ]
    runs = bs.datasets.simulate_evaluations(truths, np.logspace(19, 23, 10), n_items=1000, concentration=300, seed=seed + 1).data
    return truths, runs


def _sigmoid_bootstrap(frame, chance, resamples, rng):
    """curve_fit of the sigmoid (chance known) and a bootstrap 95% interval of its midpoint
    (log10 FLOP); resamples whose fit fails are dropped, as a user's loop would."""
    x = np.log10(frame["flops"].to_numpy())
    y = (frame["correct"] / frame["n_items"]).to_numpy()

    def curve(x, midpoint, slope, ceiling):
        return chance + (ceiling - chance) / (1.0 + np.exp(-slope * (x - midpoint)))

    bounds = ([15.0, 0.01, chance + 1e-3], [30.0, 50.0, 1.0])
    midpoints = []
    for i in [np.arange(len(x))] + [rng.integers(0, len(x), len(x)) for _ in range(resamples)]:
        try:
            midpoints.append(scipy.optimize.curve_fit(curve, x[i], y[i], p0=(21.0, 1.0, 0.8), bounds=bounds, maxfev=5000)[0][0])
        except (RuntimeError, ValueError):
            continue
    return np.quantile(midpoints[1:], [0.025, 0.975]) if len(midpoints) > 2 else (np.nan, np.nan)


def tasks_workload(args) -> dict:
    """Many downstream tasks, each fitted alone (module docstring)."""
    truths, runs = _task_world(args.tasks, args.seed)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = bs.fit_many(runs, by="task", model="downstream-sigmoid", seed=args.seed, progress=False)
    bayes_seconds = time.perf_counter() - started
    by_nuts = sum(f.attrs["sampler"] == "nuts" for f in fits.values())
    second = sum(f.attrs.get("adaptation_rounds", 0) > independence.ROUNDS for f in fits.values())
    first = len(fits) - by_nuts - second
    converged = sum(f.diagnostics.ok for f in fits.values())
    divergent = sum(f.diagnostics.divergences > 0 for f in fits.values())
    high_r_hat = sum(f.diagnostics.max_r_hat >= MAX_R_HAT for f in fits.values())
    low_ess = sum(f.diagnostics.min_ess_bulk < MIN_ESS for f in fits.values())
    bayes_covered = 0
    for truth in truths:
        row = fits[truth["task"]].summary().set_index("parameter").loc[f"midpoint_flops[{truth['task']}]"]
        bayes_covered += bool(row["q2.5"] <= truth["midpoint_flops"] <= row["q97.5"])

    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    boot_covered = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # curve_fit's covariance warnings on flat tasks
        for truth in truths:
            low, high = _sigmoid_bootstrap(runs[runs["task"] == truth["task"]], truth["chance"], args.bootstrap, rng)
            boot_covered += bool(low <= np.log10(truth["midpoint_flops"]) <= high)
    boot_seconds = time.perf_counter() - started

    n = args.tasks
    result = {
        "machine": _machine(),
        "tasks": n,
        "fit_many": {"seconds": bayes_seconds, "fits_per_second": n / bayes_seconds, "first_proposal": first, "second_proposal": second, "refitted_with_nuts": by_nuts, "converged": converged, "with_divergences": divergent, "r_hat_over_1.01": high_r_hat, "bulk_ess_under_400": low_ess, "midpoint_95_coverage": bayes_covered / n},
        "curve_fit_bootstrap": {"seconds": boot_seconds, "resamples": args.bootstrap, "fits_per_second": n / boot_seconds, "midpoint_95_coverage": boot_covered / n},
    }
    lines = [
        f"{n} simulated downstream tasks x 10 models (Beta-binomial scores, 1,000 items). bayescale: `fit_many(by=\"task\")`, "
        "downstream-sigmoid, each task alone, defaults (`sampler=\"auto\"`: 4 chains x 1,000 draws by independence Metropolis-Hastings in "
        f"batches of 64, {first} tasks from the first proposal, {second} from a second one adapted longer after the first failed a check; "
        f"{by_nuts} refitted with NUTS, 4 chains x (1000 + 1000), one per batch), one process, compilation included "
        "(persistent compilation cache as the previous run left it).",
        "",
        "| method | wall (s) | fits/s | converged (R-hat < 1.01, bulk and tail ESS >= 400, no divergences, Pareto k < 0.7) | 95% coverage of the true midpoint |",
        "|---|---|---|---|---|",
        f"| bayescale fit_many | {bayes_seconds:.0f} | {n / bayes_seconds:.2f} | {converged}/{n} ({divergent} with divergences, {high_r_hat} R-hat >= 1.01, {low_ess} bulk ESS < 400) | {bayes_covered}/{n} |",
        f"| scipy curve_fit + {args.bootstrap} bootstrap resamples | {boot_seconds:.0f} | {n / boot_seconds:.2f} | - | {boot_covered}/{n} |",
        "",
        f"Ratio of wall times (bayescale / bootstrap): {bayes_seconds / boot_seconds:.2f}. Machine: {result['machine']}.",
    ]
    return _write("tasks", result, lines)


def _interval(pair):
    return f"{pair[0]:.3f}-{pair[1]:.3f}"


def _machine():
    import jax

    return f"{platform.machine()}, Python {platform.python_version()}, jax {jax.__version__}, {len(jax.devices())} x {jax.devices()[0].platform}"


def _write(name, result, lines):
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=float))
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("chinchilla", "many", "hierarchical", "borrowing", "real-pooling", "design", "emergence-design", "downstream", "tasks", "all"), default="all")
    parser.add_argument("--worlds", type=int, default=3, help="simulated worlds of the hierarchical workload")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", type=int, default=500, help="simulated tasks of the tasks workload")
    parser.add_argument("--misfit", type=float, default=0.0, help="design workload: sd of the law's misfit in log loss, fixed per configuration and shared by its seeds (default 0; results to design_misfit.*)")
    arguments = parser.parse_args()
    if arguments.workload in ("chinchilla", "all"):
        chinchilla(arguments)
    if arguments.workload in ("many", "all"):
        many(arguments)
    if arguments.workload in ("hierarchical", "all"):
        hierarchical(arguments)
    if arguments.workload in ("borrowing", "all"):
        borrowing(arguments)
    if arguments.workload in ("real-pooling", "all"):
        real_pooling(arguments)
    if arguments.workload in ("design", "all"):
        design(arguments)
    if arguments.workload in ("emergence-design", "all"):
        emergence_design(arguments)
    if arguments.workload in ("downstream", "all"):
        downstream(arguments)
    if arguments.workload in ("tasks", "all"):
        tasks_workload(arguments)
