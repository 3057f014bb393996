"""fit(): NUTS on a model card and a RunTable, returning an immutable Fit."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.optimize
from jax.flatten_util import ravel_pytree
from numpyro.infer import MCMC, NUTS, init_to_uniform
from numpyro.infer.util import initialize_model

from . import __version__
from ._arviz import az
from .data import DataError, RunTable
from .diagnostics import Diagnostics, diagnose
from .model import centre_of, centred_inputs, make_model
from .predict import optimal_allocation, predict_loss, simulate_log_loss
from .spec import ModelSpec

#: Quantiles reported by summary (DESIGN.md section 9).
SUMMARY_QUANTILES = {"q2.5": 0.025, "q50": 0.5, "q97.5": 0.975}


def _enable_compilation_cache() -> None:
    """Turn on JAX's persistent compilation cache when ``BAYESCALE_COMPILATION_CACHE`` names a folder.

    Off by default: late in a pytest process of ~75 fits, jax 0.10.2 crashed (segmentation
    fault) once while writing a compiled program to this cache (and once, cache off, while
    compiling). Where it works, a refit of the same shapes loads the program (~1 s).
    """
    folder = os.environ.get("BAYESCALE_COMPILATION_CACHE", "")
    if not folder or folder == "0" or jax.config.jax_compilation_cache_dir:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", folder)


def _say(message: str, progress: bool) -> None:
    if progress:
        print(f"bayescale: {message}", file=sys.stderr, flush=True)


def _optimised_inits(model_fn, model_args, num_chains: int, rng_key) -> dict:
    """Per-chain starting points: a posterior mode found by L-BFGS from a random start.

    Each chain starts its own optimiser from a uniform(-2, 2) draw in unconstrained
    space (Stan's default), so distinct modes, if any, show up as disagreeing chains
    rather than being hidden by one shared start. Starting NUTS near the mode shortens
    the first warm-up window, where step size and mass matrix are still poor.
    """
    keys = jax.random.split(rng_key, num_chains)
    info, potential_fn, _, _ = initialize_model(
        keys, model_fn, model_args=model_args, init_strategy=init_to_uniform(radius=2.0)
    )
    starts = info.z
    first = jax.tree_util.tree_map(lambda leaf: leaf[0], starts)
    _, unravel = ravel_pytree(first)
    value_and_grad = jax.jit(jax.value_and_grad(lambda flat: potential_fn(unravel(flat))))

    def objective(flat):
        value, grad = value_and_grad(jnp.asarray(flat))
        return float(value), np.asarray(grad, dtype=float)

    optimised = []
    for chain in range(num_chains):
        start = np.asarray(ravel_pytree(jax.tree_util.tree_map(lambda leaf: leaf[chain], starts))[0])
        result = scipy.optimize.minimize(objective, start, jac=True, method="L-BFGS-B", options={"maxiter": 500})
        optimised.append(result.x if np.all(np.isfinite(result.x)) and np.isfinite(result.fun) else start)
    return jax.vmap(unravel)(jnp.asarray(np.stack(optimised)))


def _chain_method(requested: str, num_chains: int) -> str:
    if requested != "auto":
        return requested
    # One chain per device when there are enough devices (GPUs, or CPU devices made with
    # XLA_FLAGS=--xla_force_host_platform_device_count); otherwise one vectorised program.
    return "parallel" if jax.local_device_count() >= num_chains > 1 else "vectorized"


def fit(
    runs: RunTable | pd.DataFrame,
    model: str | Path | ModelSpec = "chinchilla",
    *,
    seed: int = 0,
    num_chains: int = 4,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    target_accept: float = 0.8,
    chain_method: str = "auto",
    progress: bool = True,
) -> "Fit":
    """Fit a scaling-law model card to runs with NUTS.

    Parameters
    ----------
    runs
        The observations (a :class:`~bayescale.RunTable`, or a DataFrame that is validated into one).
    model
        A bundled card name (``"chinchilla"``, ``"compute-power-law"``, ``"kaplan"``), a path to a
        TOML card, or a :class:`~bayescale.spec.ModelSpec`.
    seed
        Seed of every random choice (optimiser starts, NUTS, posterior predictive draws).
    num_chains, num_warmup, num_samples
        NUTS chains, warm-up iterations and kept draws per chain.
    target_accept
        NUTS target acceptance probability; raise it (0.9-0.99) if divergences are reported.
    chain_method
        ``"auto"`` (parallel over devices when there are enough, else vectorised),
        ``"parallel"``, ``"vectorized"`` or ``"sequential"``.
    progress
        Print progress and timing to stderr (and numpyro's progress bar on a terminal).

    Returns
    -------
    Fit
        The posterior as arviz InferenceData, with diagnostics. Problems found by the
        diagnostics are also issued as :class:`~bayescale.diagnostics.SamplerWarning`.

    Raises
    ------
    bayescale.data.DataError
        If the runs cannot identify the card's law (missing columns, one size only, ...).
    """
    if not isinstance(runs, RunTable):
        runs = RunTable(runs)
    spec = ModelSpec.load(model)
    if num_chains < 1 or num_warmup < 1 or num_samples < 1:
        raise ValueError("num_chains, num_warmup and num_samples must each be at least 1")
    runs.require(spec.law.inputs, spec.law.exponents)
    if len(runs.families) > 1:
        raise DataError(
            f"the data hold {len(runs.families)} families ({', '.join(runs.families[:5])}) but card "
            f"{spec.name!r} has one set of parameters for all rows; fit one family at a time "
            "(filter the table by 'family') or drop the 'family' column to pool them completely"
        )
    _enable_compilation_cache()

    data = runs.data
    centre = centre_of(runs, spec)
    x = centred_inputs(data, centre)
    log_loss = jnp.log(jnp.asarray(data["loss"].to_numpy(dtype=float)))
    model_fn = make_model(spec)
    key_init, key_mcmc, key_ppc = jax.random.split(jax.random.PRNGKey(seed), 3)

    method = _chain_method(chain_method, num_chains)
    _say(
        f"fitting card {spec.name!r} to {len(runs)} observations: {num_chains} chains x "
        f"({num_warmup} warm-up + {num_samples} draws), {method} chains",
        progress,
    )
    started = time.perf_counter()
    inits = _optimised_inits(model_fn, (x, log_loss), num_chains, key_init)
    kernel = NUTS(model_fn, target_accept_prob=target_accept, dense_mass=True)
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=method,
        progress_bar=progress and sys.stderr.isatty(),
    )
    init_params = inits if num_chains > 1 else jax.tree_util.tree_map(lambda leaf: leaf[0], inits)
    mcmc.run(key_mcmc, x, log_loss, init_params=init_params, extra_fields=("diverging", "energy", "num_steps", "accept_prob"))
    jax.block_until_ready(mcmc.get_samples())  # JAX dispatches asynchronously: time the real work
    elapsed = time.perf_counter() - started

    idata = _to_inference_data(mcmc, spec, runs, x, centre, seed, key_ppc)
    diagnostics = diagnose(idata, list(spec.sampled_parameters))
    _say(f"sampled in {elapsed:.1f} s; {'no problems found' if diagnostics.ok else 'see warnings'}", progress)
    diagnostics.warn()
    return Fit(idata=idata, spec=spec, diagnostics=diagnostics)


def _to_inference_data(mcmc: MCMC, spec: ModelSpec, runs: RunTable, x: dict, centre: dict, seed: int, key_ppc):
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items() if k != "log_loss"}
    extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    natural = {k: np.asarray(v) for k, v in spec.law.natural(samples, centre).items()}
    posterior = {**samples, **{k: v for k, v in natural.items() if k not in samples}}
    data = runs.data
    predicted = simulate_log_loss(spec, posterior, x, noise=True, rng_key=key_ppc)
    constant = {name: data[name].to_numpy(dtype=float) for name in ("params", "tokens", "flops") if name in data}
    constant["family_index"] = runs.family_codes()
    attrs = {
        "model_card": spec.text,
        "model_name": spec.name,
        "data_hash": runs.hash(),
        "data_source": runs.source,
        "bayescale_version": __version__,
        "centre": json.dumps(centre),
        "families": json.dumps(runs.families),
        "seed": seed,
    }
    return az.from_dict(
        posterior=posterior,
        # Log scale: with Student-t noise of nu near 1 a draw of exp(log loss) can overflow.
        posterior_predictive={"log_loss": predicted},
        sample_stats={
            "diverging": extra["diverging"],
            "energy": extra["energy"],
            "n_steps": extra["num_steps"],
            "acceptance_rate": extra["accept_prob"],
        },
        observed_data={"loss": data["loss"].to_numpy(dtype=float), "log_loss": np.log(data["loss"].to_numpy(dtype=float))},
        constant_data=constant,
        coords={"obs": np.arange(len(data))},
        dims={"loss": ["obs"], "log_loss": ["obs"], **{name: ["obs"] for name in constant}},
        attrs=attrs,
    )


@dataclass(frozen=True)
class Fit:
    """A fitted scaling model: posterior draws, the card that made them, and diagnostics.

    Build one with :func:`fit` or :func:`load`; do not construct it directly.

    Attributes
    ----------
    idata
        arviz InferenceData with groups ``posterior``, ``posterior_predictive``,
        ``sample_stats``, ``observed_data`` and ``constant_data``; its attributes carry
        the model card text, the data hash and the package version.
    spec
        The model card.
    diagnostics
        Convergence diagnostics with advice.
    """

    idata: object
    spec: ModelSpec
    diagnostics: Diagnostics

    @property
    def centre(self) -> dict[str, float]:
        """Mean log inputs of the fitted data, at which the card's intercepts are stated."""
        return json.loads(self.idata.attrs["centre"])

    @property
    def attrs(self) -> dict:
        """Provenance: model card, data hash, package version, seed."""
        return dict(self.idata.attrs)

    @property
    def families(self) -> list[str]:
        """Families present in the fitted data."""
        return json.loads(self.idata.attrs["families"])

    def draws(self, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Posterior draws with chains flattened: ``{name: array of shape (chains*draws,)}``."""
        posterior = self.idata.posterior
        names = list(posterior.data_vars) if names is None else names
        return {name: posterior[name].values.reshape(-1) for name in names}

    def observed(self) -> pd.DataFrame:
        """The fitted observations as a DataFrame (``params``/``tokens``/``flops``, ``family``, ``loss``)."""
        constant = self.idata.constant_data
        frame = pd.DataFrame({name: constant[name].values for name in constant.data_vars if name != "family_index"})
        frame["family"] = np.asarray(self.families)[constant["family_index"].values]
        frame["loss"] = self.idata.observed_data["loss"].values
        return frame

    def summary(self) -> pd.DataFrame:
        """Posterior summary of the published parameters and the noise terms.

        Returns
        -------
        pandas.DataFrame
            One row per parameter with columns ``parameter, mean, sd, q2.5, q50, q97.5,
            r_hat, ess_bulk, ess_tail``. Chinchilla parameters appear on the natural scale as
            ``E, A, alpha, B, beta``.
        """
        names = [*self.spec.law.reported, *self.spec.noise_parameters]
        posterior = self.idata.posterior[names]
        draws = self.draws(names)
        r_hat = az.rhat(posterior) if posterior.sizes["chain"] > 1 else None
        ess_bulk, ess_tail = az.ess(posterior, method="bulk"), az.ess(posterior, method="tail")
        rows = []
        for name in names:
            row = {"parameter": name, "mean": draws[name].mean(), "sd": draws[name].std(ddof=1)}
            row.update({label: np.quantile(draws[name], q) for label, q in SUMMARY_QUANTILES.items()})
            row["r_hat"] = float(r_hat[name]) if r_hat is not None else float("nan")
            row["ess_bulk"], row["ess_tail"] = float(ess_bulk[name]), float(ess_tail[name])
            rows.append(row)
        return pd.DataFrame(rows)

    def predict(self, params=None, tokens=None, flops=None, family=None, *, noise=False, draws=False, seed=0):
        """Posterior predictive loss at new scales; see :func:`bayescale.predict.predict_loss`."""
        return predict_loss(self, params=params, tokens=tokens, flops=flops, family=family, noise=noise, draws=draws, seed=seed)

    def optimal(self, flops, *, draws=False):
        """Compute-optimal allocation at a budget; see :func:`bayescale.predict.optimal_allocation`."""
        return optimal_allocation(self, flops=flops, draws=draws)

    def save(self, path: str | Path) -> Path:
        """Write the fit to a netCDF file that :func:`load` reads back exactly."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.idata.to_netcdf(str(path))
        return path


def load(path: str | Path) -> Fit:
    """Read a fit saved by :meth:`Fit.save`, rebuilding its model card from the stored text.

    Raises
    ------
    ValueError
        If the file is not a bayescale fit.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no such file: {path}")
    try:
        idata = az.from_netcdf(str(path))
        idata.load()  # read everything now, so the file is closed and can be overwritten
        card = idata.attrs["model_card"]
    except (OSError, KeyError, AttributeError, ValueError) as err:
        raise ValueError(f"{path} is not a bayescale fit ({err}); make one with `bayescale fit`") from None
    spec = ModelSpec.from_toml(card, where=f"model card stored in {path}")
    return Fit(idata=idata, spec=spec, diagnostics=diagnose(idata, list(spec.sampled_parameters)))
