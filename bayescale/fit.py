"""fit(): NUTS on a model card and a RunTable, returning an immutable Fit."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import __version__
from ._arviz import az
from .data import DataError, RunTable
from .diagnostics import ModelWarning, convergence, diagnose
from .coordinates import to_parameters
from .engine import Settings, devices_for, enable_compilation_cache, on_device, sampler_for, say
from .hierarchy import NonCentredStart, check_families, choose_centring, family_parameters, groups_of, layout_of, make_hierarchical_model, population_draws, run_spread_problem, simulate_rows
from .model import centre_of, centred_inputs, make_model
from .posterior import Posterior
from .predict import check_family, optimal_allocation, predict_loss, simulate_log_loss
from .downstream import DownstreamFit, DownstreamSpec, downstream_diagnostics, fit_downstream
from .spec import ModelSpec, is_downstream, load_card

#: Quantiles reported by summary (DESIGN.md section 9).
SUMMARY_QUANTILES = {"q2.5": 0.025, "q50": 0.5, "q97.5": 0.975}


def fit(
    runs: RunTable | pd.DataFrame,
    model: "str | Path | ModelSpec | DownstreamSpec" = "chinchilla",
    *,
    seed: int = 0,
    num_chains: int = 4,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    target_accept: float | None = None,
    chain_method: str = "auto",
    max_tree_depth: int = 10,
    device: str | None = None,
    progress: bool = True,
) -> "Fit | DownstreamFit":
    """Fit a scaling-law model card to runs with NUTS.

    Parameters
    ----------
    runs
        The observations (a :class:`~bayescale.RunTable`, or a DataFrame that is validated into one).
    model
        A bundled card name (``"chinchilla"``, ``"compute-power-law"``, ``"kaplan"``; downstream
        accuracy: ``"downstream-sigmoid"``, ``"loss-to-accuracy"``, ``"downstream-exponential"``),
        a path to a TOML card, or a parsed card.
    seed
        Seed of every random choice (optimiser starts, NUTS, posterior predictive draws).
    num_chains, num_warmup, num_samples
        NUTS chains, warm-up iterations and kept draws per chain.
    target_accept
        NUTS target acceptance probability; default: the card's (0.8 unless its ``[sampler]``
        section says otherwise). Raise it (0.9-0.99) if divergences are reported.
    chain_method
        ``"auto"`` (chains split across devices when there are several, else vectorised on
        one), ``"parallel"`` or ``"vectorized"``; see :mod:`bayescale.engine`.
    max_tree_depth
        NUTS's maximum tree depth; raise it if the diagnostics report saturated trees.
    device
        Where to sample: ``"cpu"``, ``"gpu"`` or ``"tpu"``; default JAX's default platform (a
        GPU when a CUDA build of JAX is installed). Chains are split across that platform's
        devices as ``chain_method`` says.
    progress
        Print progress and timing to stderr.

    Returns
    -------
    Fit or DownstreamFit
        The posterior as arviz InferenceData, with diagnostics (a
        :class:`~bayescale.downstream.DownstreamFit` for a downstream card). Problems found by
        the diagnostics are also issued as :class:`~bayescale.diagnostics.SamplerWarning`.

    Raises
    ------
    bayescale.data.DataError
        If the runs cannot identify the card's law (missing columns, one size only, a task
        evaluated on one model, ...).
    """
    if not isinstance(runs, RunTable):
        runs = RunTable(runs)
    spec = load_card(model)
    settings = Settings(num_chains, num_warmup, num_samples, target_accept or spec.target_accept, max_tree_depth)
    devices = devices_for(chain_method, num_chains, device)
    with on_device(device):
        if isinstance(spec, DownstreamSpec):
            return fit_downstream(runs, spec, seed=seed, settings=settings, devices=devices, progress=progress)
        return _fit_loss(runs, spec, seed=seed, settings=settings, devices=devices, progress=progress)


def _fit_loss(runs: RunTable, spec: ModelSpec, *, seed: int, settings: Settings, devices, progress: bool) -> "Fit":
    """Fit a loss card (single-family or hierarchical); see :func:`fit`."""
    num_chains, num_warmup, num_samples = settings.num_chains, settings.num_warmup, settings.num_samples
    if spec.hierarchical:
        check_families(runs, spec)
    else:
        check_identifiable(runs, spec)
    enable_compilation_cache()

    data = runs.data
    centre = centre_of(runs, spec)
    x = centred_inputs(data, centre)
    log_loss = jnp.log(jnp.asarray(data["loss"].to_numpy(dtype=float)))
    if spec.hierarchical:
        groups = groups_of(runs, spec)
        args = (x, log_loss, {k: jnp.asarray(v) for k, v in groups.items()})
        start = NonCentredStart(layout_of(spec), {name: _typical(spec.priors[name]) for name in spec.noise_parameters})
        sampler = sampler_for(spec.text, lambda: make_hierarchical_model(spec), args, settings, devices=devices, start=start)
        groups["centring"] = choose_centring(sampler, args)
        args[2]["centring"] = jnp.asarray(groups["centring"])
        _say_groups(runs, groups, progress)
    else:
        groups, args = None, (x, log_loss)
        sampler = sampler_for(spec.text, lambda: make_model(spec), args, settings, devices=devices)
    say(
        f"fitting card {spec.name!r} to {len(runs)} observations: {num_chains} chains x "
        f"({num_warmup} warm-up + {num_samples} draws){'' if sampler.runs else ', compiling first'}",
        progress,
    )
    draws = sampler.run(jax.random.PRNGKey(seed), args, progress=progress)
    idata = to_inference_data(draws.samples, draws.stats, spec, runs, x, centre, seed, groups)
    idata.attrs["target_accept"] = settings.target_accept  # what the divergence advice builds on
    diagnostics = diagnose(idata, list(spec.sampled_parameters))
    say(f"done in {draws.seconds:.1f} s; {'no problems found' if diagnostics.ok else 'see warnings'}", progress)
    diagnostics.warn()
    if spec.hierarchical and groups["run_effect"]:
        problem = run_spread_problem(idata.posterior["sigma_run"].values)
        if problem:
            warnings.warn(problem, ModelWarning, stacklevel=2)
    return Fit(idata=idata, spec=spec, diagnostics=diagnostics)


def summary_rows(entries: list[tuple[str, np.ndarray]]) -> list[dict]:
    """Summary rows (:meth:`Fit.summary`'s columns) of named draws, each of shape ``(chain, draw)``."""
    r_hat, ess_bulk, ess_tail = convergence(np.stack([draws for _, draws in entries]))
    rows = []
    for (name, draws), *checks in zip(entries, r_hat, ess_bulk, ess_tail):
        flat = draws.reshape(-1)
        row = {"parameter": name, "mean": flat.mean(), "sd": flat.std(ddof=1)}
        row.update({label: np.quantile(flat, q) for label, q in SUMMARY_QUANTILES.items()})
        row.update(zip(("r_hat", "ess_bulk", "ess_tail"), map(float, checks)))
        rows.append(row)
    return rows


def _typical(prior) -> float:
    """A positive prior's mean, or its scale where the mean is infinite (e.g. half-Cauchy)."""
    mean = float(prior.to_numpyro().mean)
    return mean if np.isfinite(mean) else float(prior.arguments["scale"])


def check_identifiable(runs: RunTable, spec: ModelSpec, where: str = "the data") -> None:
    """Raise :class:`DataError` unless ``runs`` can identify the card's single set of parameters."""
    runs.require(spec.law.inputs, spec.law.exponents)
    if len(runs.families) > 1:
        raise DataError(
            f"{where} hold {len(runs.families)} families ({', '.join(runs.families[:5])}) but card "
            f"{spec.name!r} has one set of parameters for all rows; fit one family at a time "
            "(bayescale.fit_many(runs, by='family')) or drop the 'family' column to pool them completely"
        )


def _flatten_chains(samples: dict, centring: np.ndarray) -> dict:
    """Draws of shape ``(chain, draw, ...)`` -> ``(chain * draw, ...)``, with the fit's centring
    (the form :func:`bayescale.hierarchy.family_parameters` reads)."""
    flat = {k: np.asarray(v).reshape(-1, *np.shape(v)[2:]) for k, v in samples.items()}
    return {**flat, "centring": centring}


def _say_groups(runs: RunTable, groups: dict, progress: bool) -> None:
    say(
        f"{len(runs.families)} families, {len(groups['run_rows'])} runs"
        + ("" if groups["run_effect"] else "; every run has one row, so run-to-run spread is not separated from noise"),
        progress,
    )


def to_inference_data(samples: dict, stats: dict, spec: ModelSpec, runs: RunTable, x: dict, centre: dict, seed: int, groups: dict | None = None):
    """Assemble the InferenceData of a fit from draws of shape ``(chain, draw)``.

    Adds the card's published parameters, posterior predictive log losses, the data and
    the provenance attributes (card text, data hash, package version, centre, seed). For a
    hierarchical card (``groups`` from :func:`bayescale.hierarchy.groups_of`) the law's
    parameters get a ``family`` dimension, the typical family's published parameters are
    added as ``<name>_population``, and the family/run structure is kept in ``constant_data``.
    """
    data = runs.data
    rng = np.random.default_rng(seed)
    log_loss = np.log(data["loss"].to_numpy(dtype=float))
    dims: dict = {}
    if groups is None:
        natural = {k: np.asarray(v) for k, v in spec.law.natural(samples, centre).items()}
        posterior = {**samples, **{k: v for k, v in natural.items() if k not in samples}}
        predicted = simulate_log_loss(spec, posterior, x, noise=True, rng=rng)
    else:
        shape = samples["mu"].shape[:2]
        flat = _flatten_chains(samples, groups["centring"])
        theta = family_parameters(spec, flat)
        layout = layout_of(spec)
        typical, _ = to_parameters(spec.law, {name: flat["mu"][:, k] for k, name in enumerate(layout.names)})
        per_family = {**theta, **spec.law.natural(theta, centre)}
        population = spec.law.natural(typical, centre)
        posterior = {k: np.asarray(v) for k, v in samples.items()}
        posterior.update({k: np.asarray(v).reshape(*shape, -1) for k, v in per_family.items()})
        posterior.update({f"{k}_population": np.asarray(v).reshape(shape) for k, v in population.items()})
        predicted = simulate_rows(spec, theta, {k: flat[k] for k in ("sigma", "sigma_run")}, groups, x, log_loss, rng).reshape(*shape, -1)
    constant = {name: data[name].to_numpy(dtype=float) for name in ("params", "tokens", "flops") if name in data}
    constant["family_index"] = runs.family_codes()
    coords = {"obs": np.arange(len(data))}
    if groups is not None:
        dims = {name: ["family"] for name in per_family}
        dims.update(mu=["coordinate"], tau=["pooled_coordinate"], family_raw=["family", "varying_coordinate"])
        constant.update(run_index=groups["run"], centring=groups["centring"], run_effect=groups["run_effect"])
        dims.update(run_index=["obs"], centring=["family", "varying_coordinate"])
        coords.update(family=runs.families, coordinate=list(layout.names), pooled_coordinate=layout.pooled_names, varying_coordinate=layout.varying_names)
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
        sample_stats=stats,
        observed_data={"loss": data["loss"].to_numpy(dtype=float), "log_loss": log_loss},
        constant_data=constant,
        coords=coords,
        dims={"loss": ["obs"], "log_loss": ["obs"], **{name: ["obs"] for name in ("params", "tokens", "flops", "family_index")}, **dims},
        attrs=attrs,
    )


@dataclass(frozen=True)
class Fit(Posterior):
    """A fitted scaling model: posterior draws, the card that made them, and diagnostics.

    Build one with :func:`fit` or :func:`load`; do not construct it directly. ``centre`` holds
    the mean log inputs of the fitted data, at which the card's intercepts are stated.

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

    spec: ModelSpec

    def observed(self) -> pd.DataFrame:
        """The fitted observations as a DataFrame (``params``/``tokens``/``flops``, ``family``, ``loss``;
        for hierarchical fits also ``run``, so that the frame refits to the same model)."""
        constant = self.idata.constant_data
        frame = pd.DataFrame({name: constant[name].values for name in ("params", "tokens", "flops") if name in constant})
        frame["family"] = np.asarray(self.families)[constant["family_index"].values]
        if "run_index" in constant:
            frame["run"] = [f"run-{k}" for k in constant["run_index"].values]
        frame["loss"] = self.idata.observed_data["loss"].values
        return frame

    def summary(self) -> pd.DataFrame:
        """Posterior summary of the published parameters and the noise terms.

        Returns
        -------
        pandas.DataFrame
            One row per parameter with columns ``parameter, mean, sd, q2.5, q50, q97.5,
            r_hat, ess_bulk, ess_tail``. Chinchilla parameters appear on the natural scale as
            ``E, A, alpha, B, beta``. A hierarchical fit lists the population's typical family
            (``alpha[population]``), each family (``alpha[family_a]``), the family spreads
            in the sampler's coordinates (``tau[log_alpha]``), the checkpoint noise ``sigma``
            and the run-to-run (seed) spread ``sigma_run``.
        """
        law = self.spec.law
        if self.spec.hierarchical:
            names = [*(f"{n}_population" for n in law.reported), *law.reported, *self.spec.sampled_parameters[1:]]
            names = [n for n in names if n != "family_raw"]
        else:
            names = [*law.reported, *self.spec.noise_parameters]
        posterior = self.idata.posterior[names]
        entries = []
        for name in names:
            values = posterior[name]
            extra = [d for d in values.dims if d not in ("chain", "draw")]
            for label in values[extra[0]].values if extra else [None]:
                base = name.removesuffix("_population")
                tag = "population" if name.endswith("_population") else label
                chosen = values.sel({extra[0]: label}) if extra else values
                entries.append((base if tag is None else f"{base}[{tag}]", chosen.values))
        return pd.DataFrame(summary_rows(entries))

    def parameter_draws(self, family: str | None = None, *, seed: int = 0) -> dict[str, np.ndarray]:
        """Draws of the law's parameters for a family, and of a new observation's noise.

        Parameters
        ----------
        family
            A fitted family, or (hierarchical cards) ``"new"`` for a family not in the data,
            whose parameters are drawn from the population. ``None`` means the only family of
            a single-family fit.
        seed
            Seed of the population draws for a new family.

        Returns
        -------
        dict
            The law's parameters (centred, see :mod:`bayescale.laws`) and ``sigma``, the sd of a
            new run's observed log loss around the law (for hierarchical cards the run-to-run
            and checkpoint spreads combined), each a 1-D array of draws.
        """
        check_family(self, family)
        if not self.spec.hierarchical:
            return self.draws(list(self.spec.sampled_parameters))
        flat = {**self.draws(list(self.spec.sampled_parameters)), "centring": self.idata.constant_data["centring"].values}
        if family is None:
            family = self.families[0]
        index = self.families.index(family) if family in self.families else None  # else a new family
        theta = population_draws(self.spec, flat, index, np.random.default_rng([seed, 1]))
        run_effect = float(np.ravel(self.idata.constant_data["run_effect"].values)[0])
        theta["sigma"] = np.sqrt(flat["sigma"] ** 2 + run_effect * flat["sigma_run"] ** 2)
        return theta

    def predict(self, params=None, tokens=None, flops=None, family=None, *, noise=False, draws=False, seed=0):
        """Posterior predictive loss at new scales.

        Parameters
        ----------
        params, tokens, flops
            Scales to predict at (scalars or 1-D arrays); a missing one of the three is derived
            with C = 6 N D. A compute law needs only ``flops``.
        family
            The family to predict for (hierarchical fits; ``"new"`` for an unseen one).
        noise
            Include observation noise: the loss a single new run would show, rather than the
            law's expected loss.
        draws
            Also return the draws of each row (column ``draws``).
        seed
            Seed of the noise and new-family draws.

        Returns
        -------
        pandas.DataFrame
            See :func:`bayescale.predict.predict_loss`.
        """
        return predict_loss(self, params=params, tokens=tokens, flops=flops, family=family, noise=noise, draws=draws, seed=seed)

    def optimal(self, flops, *, family=None, draws=False, seed=0):
        """Compute-optimal allocation at a budget.

        Parameters
        ----------
        flops
            Budget(s) in FLOP.
        family
            The family (hierarchical fits; ``"new"`` for an unseen one).
        draws
            Also return the draws of each row (column ``draws``).
        seed
            Seed of the new-family draws.

        Returns
        -------
        pandas.DataFrame
            See :func:`bayescale.predict.optimal_allocation`.
        """
        return optimal_allocation(self, flops=flops, family=family, draws=draws, seed=seed)


def load(path: str | Path) -> "Fit | DownstreamFit":
    """Read a fit saved by :meth:`Fit.save` (or :meth:`DownstreamFit.save`), rebuilding its
    model card from the stored text.

    Parameters
    ----------
    path
        A netCDF file written by ``save``.

    Returns
    -------
    Fit or DownstreamFit
        A :class:`~bayescale.downstream.DownstreamFit` for a downstream card.

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
    if is_downstream(card):
        spec = DownstreamSpec.from_toml(card, where=f"model card stored in {path}")
        return DownstreamFit(idata=idata, spec=spec, diagnostics=downstream_diagnostics(idata, spec))
    spec = ModelSpec.from_toml(card, where=f"model card stored in {path}")
    return Fit(idata=idata, spec=spec, diagnostics=diagnose(idata, list(spec.sampled_parameters)))
