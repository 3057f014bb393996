"""Compile-once NUTS: one traced and compiled program per model card and data shape.

numpyro's ``MCMC.run`` traces and compiles its sampler again on every call when its
progress bar is off (numpyro 0.22), which was 10-19 s of a 20 s fit. Here the model's
data are *arguments* of the compiled program, not constants baked into it, so a refit
of the same card to data of the same shape reuses the program; :func:`sampler_for`
keeps one :class:`Sampler` per (card, settings, devices, data shape) for the life of the process,
and its programs on disk (:mod:`bayescale.programs`), so that a new process neither compiles
nor traces them again.

Each chain, in one program (vectorised over chains, and over data sets in
:mod:`bayescale.parallel`):

1. starts from a uniform(-2, 2) draw in unconstrained space (Stan's default), moves to a
   posterior mode by damped Newton steps (:func:`find_mode`) and takes the inverse Hessian
   there as its first mass matrix, so the first warm-up window does not spend its
   iterations walking in from a poor start; distinct modes still show up as chains that
   disagree, because each chain optimises from its own start;
2. runs numpyro's NUTS kernel (``numpyro.infer.hmc.hmc``: Stan's windowed adaptation of
   step size and a dense mass matrix), in chunks of at most :data:`CHUNK` iterations so
   that progress can be reported between chunks without a second compiled program.

The kernel is numpyro's own, so the sampler's statistics are those of ``NUTS`` in
``MCMC``; only the program around it differs.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding, PartitionSpec
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer.hmc import hmc
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import constrain_fn, potential_energy

from . import independence
from .programs import StoredProgram

#: Most NUTS iterations per call of the compiled program (progress is reported between calls).
CHUNK = 250
#: Mode searches a chain may make before it starts sampling where the last one stopped, and
#: the largest unconstrained value a usable start may have (the cards' prior locations are
#: within +-12 and their scales a few units, so 50 is no posterior's mode).
START_ATTEMPTS = 5
MAX_START = 50.0

#: Per-iteration sampler statistics kept, with their arviz ``sample_stats`` names.
STATISTICS = {"diverging": "diverging", "energy": "energy", "num_steps": "n_steps", "accept_prob": "acceptance_rate"}


@dataclass(frozen=True)
class Settings:
    """NUTS settings that shape the compiled program.

    Attributes
    ----------
    num_chains, num_warmup, num_samples
        Chains, warm-up iterations and kept draws per chain.
    target_accept
        Target acceptance probability of step-size adaptation.
    max_tree_depth
        NUTS's maximum tree depth (at most ``2**max_tree_depth`` gradient evaluations per draw).
    dense_mass
        Adapt a dense (rather than diagonal) mass matrix: the posteriors of scaling laws are
        strongly correlated even after reparameterisation, and have few parameters.
    """

    num_chains: int = 4
    num_warmup: int = 1000
    num_samples: int = 1000
    target_accept: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = True

    def __post_init__(self):
        if self.num_chains < 1 or self.num_warmup < 1 or self.num_samples < 1:
            raise ValueError("num_chains, num_warmup and num_samples must each be at least 1")
        if not 0 < self.target_accept < 1:
            raise ValueError(f"target_accept must be between 0 and 1, got {self.target_accept}")


@dataclass(frozen=True)
class Draws:
    """What a sampler run returns, as NumPy arrays with leading axes ``(chain, draw)``
    (``(dataset, chain, draw)`` for a batched sampler).

    Attributes
    ----------
    samples
        Constrained values of every latent and deterministic site of the model.
    stats
        Per-iteration sampler statistics, keyed by their arviz names (:data:`STATISTICS`).
    seconds
        Wall time of the run (optimisation, warm-up and sampling; compilation included
        where the program was not compiled yet).
    pareto_k
        Independence sampling only (:meth:`Sampler.run_independent`): the Pareto shape of
        the proposal's importance ratios (one per data set when batched).
    """

    samples: dict
    stats: dict
    seconds: float
    pareto_k: np.ndarray | None = None


def _latent_layout(model, args) -> dict:
    """Zeros shaped like each latent site's unconstrained value: fixes the flat layout.

    Traced abstractly (``jax.eval_shape``): run eagerly, each of the model's operations
    would be compiled on its own, seconds of a fresh process.
    """

    def unconstrained(args):
        seeded = handlers.substitute(handlers.seed(model, rng_seed=0), substitute_fn=init_to_uniform)
        trace = handlers.trace(seeded).get_trace(*args)
        return {
            name: biject_to(site["fn"].support).inv(site["value"])
            for name, site in trace.items()
            if site["type"] == "sample" and not site["is_observed"]
        }

    shapes = jax.eval_shape(unconstrained, args)
    return {name: jnp.zeros(s.shape, s.dtype) for name, s in shapes.items()}


def find_mode(potential, z0, *, max_iterations: int = 200):
    """Minimise ``potential`` from ``z0`` by Levenberg-Marquardt-damped Newton steps.

    Scaling-law posteriors have few parameters, so the exact Hessian is cheap, and damped
    Newton converges from the poor starts where ``jax.scipy.optimize``'s BFGS stops at a
    failed line search (it did for 8 of 8 uniform(-2, 2) starts on the Chinchilla card,
    where scipy's L-BFGS-B converged for all 8). A step that does not lower the potential
    (or leaves its domain) is rejected and the damping raised tenfold.

    Returns
    -------
    (z, hessian)
        The mode (or the best point found) and the Hessian of ``potential`` there.
    """
    gradient, hessian = jax.grad(potential), jax.hessian(potential)
    eye = jnp.eye(z0.shape[0])

    def improve(state):
        z, value, grad, hess, damping, i, _ = state
        step = -jnp.linalg.solve(hess + damping * eye, grad)
        candidate = z + step
        new_value = potential(candidate)
        better = jnp.isfinite(new_value) & jnp.all(jnp.isfinite(step)) & (new_value < value)
        converged = better & (value - new_value < 1e-10 * (1.0 + jnp.abs(value)))
        z = jnp.where(better, candidate, z)
        value = jnp.where(better, new_value, value)
        grad = jnp.where(better, gradient(z), grad)
        hess = jnp.where(better, hessian(z), hess)
        damping = jnp.clip(jnp.where(better, damping / 3.0, damping * 10.0), 1e-9, 1e12)
        return z, value, grad, hess, damping, i + 1, converged

    def running(state):
        *_, damping, i, converged = state
        return (i < max_iterations) & ~converged & (damping < 1e12)

    # The first iteration "steps" to z0 itself (zero gradient, infinite value) and evaluates the
    # derivatives there: one call site of the Hessian instead of two, which cut the time to trace
    # a batch of lone downstream tasks' mode searches from 1.8 to 1.4 s.
    zero = jnp.zeros_like(z0)
    state = (z0, jnp.asarray(jnp.inf, zero.dtype), zero, eye, jnp.asarray(3.0), -1, jnp.asarray(False))  # damping 1 after it
    z, _, _, hess, *_ = lax.while_loop(running, improve, state)
    return z, hess


def _covariance(precision):
    """Covariance from a Hessian, with eigenvalues floored so that a Hessian that is not
    positive definite (a chain stopped off the mode) or is nearly flat along a ridge still
    gives a usable metric (at most 30 unconstrained units of scale in any direction)."""
    precision = 0.5 * (precision + precision.T)
    eigenvalues, vectors = jnp.linalg.eigh(precision)
    scale = vectors * (jnp.clip(eigenvalues, 1e-3, None) ** -0.5)[None, :]
    return scale @ scale.T


class Sampler:
    """NUTS compiled for one model and one shape of data, reusable across data sets.

    Parameters
    ----------
    model
        A numpyro model ``model(*args)`` whose data are all in ``args``.
    example_args
        Arguments of the shape the program is compiled for.
    settings
        NUTS settings.
    batched
        Compile for a batch of data sets (a leading axis on every argument) rather than one.
    devices
        Devices to split the chains (or, when batched, the data sets) across, each running
        its share as one vectorised program; ``None`` runs everything on the default device.
    start
        For models whose sampling coordinates have no posterior mode (a hierarchical model's
        (partly) centred coordinates: the density grows without bound as a spread goes to zero), an
        object with ``args(args)``, the arguments of an equivalent model that has one,
        ``initial(latent)``, which adjusts a chain's random unconstrained starting values, and
        ``convert(latent, args)``, which maps that model's unconstrained values to this one's.
        Chains then optimise in the former and start sampling at the converted point.
    key
        What determines the model beyond the arguments' shapes (:func:`sampler_for` passes the
        card's text, settings and data layout): with it, the programs are kept on disk
        (:mod:`bayescale.programs`) and a new process skips tracing them. ``None`` keeps them
        in memory only.
    """

    def __init__(
        self, model, example_args: tuple, settings: Settings, *, batched: bool = False, devices=None, start=None,
        key: str | None = None,
    ):
        self.settings = settings
        self.batched = batched
        self.runs = 0
        one_example = jax.tree_util.tree_map(lambda leaf: leaf[0], example_args) if batched else example_args
        flat, unravel = ravel_pytree(_latent_layout(model, one_example))
        self.dim = flat.size

        @jax.jit  # traced once, then reused as a jaxpr by every transformation below
        def potential(z, args):
            return potential_energy(model, args, {}, unravel(z))

        def whitened_potential(u, args, shift, scale):
            return potential(shift + scale @ u, args)

        # NUTS runs in coordinates whitened by each chain's Laplace approximation, x = shift + scale u.
        # numpyro shrinks every adapted covariance towards 1e-3 times the identity (hmc_util's
        # welford_covariance); in the model's own coordinates that added variance (1e-5 after
        # 500 draws) swamps parameters known to 1e-3 or better (the Chinchilla card's log loss at
        # the centre has posterior sd 5e-4), and the step size must shrink to match. Whitened,
        # every posterior scale is near 1 and the shrinkage is negligible.
        init_kernel, sample_kernel = hmc(
            potential_fn_gen=lambda args, shift, scale: partial(whitened_potential, args=args, shift=shift, scale=scale),
            algo="NUTS",
        )

        def start_chain(key, args):
            key_start, key_nuts = jax.random.split(key)
            z0 = jax.random.uniform(key_start, (self.dim,), minval=-2.0, maxval=2.0)
            if start is None:
                z_mode, precision = find_mode(partial(potential, args=args), z0)
            else:
                # Optimise where the posterior has a mode, then move to the sampling coordinates.
                z0 = ravel_pytree(start.initial(unravel(z0)))[0]
                z_start, _ = find_mode(partial(potential, args=start.args(args)), z0)
                z_mode = ravel_pytree(start.convert(unravel(z_start), args))[0]
                precision = jax.hessian(partial(potential, args=args))(z_mode)
            # Start at this chain's mode, whitened by the Laplace approximation's covariance: the
            # first warm-up window then explores the posterior rather than walking to it with unit
            # step lengths. (Starting at a draw from the approximation instead threw chains far
            # along weakly identified ridges, where they adapted badly.)
            affine = (z_mode, jnp.linalg.cholesky(_covariance(precision)))
            state = init_kernel(
                jnp.zeros(self.dim),
                settings.num_warmup,
                inverse_mass_matrix=jnp.eye(self.dim) if settings.dense_mass else jnp.ones(self.dim),
                dense_mass=settings.dense_mass,
                target_accept_prob=settings.target_accept,
                max_tree_depth=settings.max_tree_depth,
                model_args=(args, *affine),
                rng_key=key_nuts,
            )
            return state, affine

        def advance_chain(chain, args, steps):
            state, (shift, scale) = chain

            # A dynamic trip count into a fixed-size buffer: chunks of any length share one program.
            def body(i, carry):
                state, buffer = carry
                state = sample_kernel(state, model_args=(args, shift, scale))
                row = {"z": shift + scale @ state.z, **{name: getattr(state, name) for name in STATISTICS}}
                buffer = jax.tree_util.tree_map(lambda b, v: b.at[i].set(v), buffer, row)
                return state, buffer

            shapes = {"z": (self.dim,), "diverging": (), "energy": (), "num_steps": (), "accept_prob": ()}
            dtypes = {"diverging": bool, "num_steps": jnp.result_type(int)}
            buffer = {k: jnp.zeros((CHUNK, *s), dtypes.get(k, jnp.result_type(float))) for k, s in shapes.items()}
            state, buffer = lax.fori_loop(0, steps, body, (state, buffer))
            return (state, (shift, scale)), buffer

        def constrain(z, args):
            return constrain_fn(model, args, {}, unravel(z), return_deterministic=True)

        start_chains = jax.vmap(start_chain, in_axes=(0, None))
        advance_chains = jax.vmap(advance_chain, in_axes=(0, None, None))
        constrain_draws = jax.vmap(jax.vmap(constrain, in_axes=(0, None)), in_axes=(0, None))
        if batched:
            start_chains = jax.vmap(start_chains)
            advance_chains = jax.vmap(advance_chains, in_axes=(0, 0, None))
            constrain_draws = jax.vmap(constrain_draws)
        program = partial(StoredProgram, key=key)
        start_placement = advance_placement = {}
        if devices is not None and len(devices) > 1:
            # shard_map, not a sharded jit: each device runs its own NUTS loops, where SPMD
            # partitioning of one vmapped loop would synchronise every device at every leapfrog step.
            mesh = jax.make_mesh((len(devices),), ("split",), (jax.sharding.AxisType.Auto,), devices=devices)
            split, same = PartitionSpec("split"), PartitionSpec()
            data = split if batched else same
            start_chains = jax.shard_map(start_chains, mesh=mesh, in_specs=(split, data), out_specs=split, check_vma=False)
            advance_chains = jax.shard_map(
                advance_chains, mesh=mesh, in_specs=(split, data, same), out_specs=split, check_vma=False
            )
            # Placed as the shard_map splits them: a stored program records its devices.
            placed = lambda *specs: tuple(NamedSharding(mesh, spec) for spec in specs)  # noqa: E731
            start_placement = dict(in_shardings=placed(split, data), out_shardings=NamedSharding(mesh, split), mesh=mesh)
            advance_placement = dict(in_shardings=placed(split, data, same), out_shardings=NamedSharding(mesh, split), mesh=mesh)
        self._start = program(start_chains, "start", **start_placement)
        self._advance = program(advance_chains, "advance", **advance_placement)
        self._constrain = program(constrain_draws, "constrain")

        def laplace(args):
            # From where the chains' optimisers start, less their jitter, in the start's coordinates.
            if start is None:
                return find_mode(partial(potential, args=args), jnp.zeros(self.dim))
            z0 = ravel_pytree(start.initial(unravel(jnp.zeros(self.dim))))[0]
            return find_mode(partial(potential, args=start.args(args)), z0)

        def independent(key, args, z_start, rounds):
            # From the Laplace approximation at one mode (``laplace``'s): the proposal's adaptation,
            # not several chains' starts, is what explores here. The optimiser is left out of this
            # program: it would double its compilation time, and the mode is often known already.
            z_mode = z_start if start is None else ravel_pytree(start.convert(unravel(z_start), args))[0]
            precision = jax.hessian(partial(potential, args=args))(z_mode)
            return independence.sample(
                partial(potential, args=args), z_mode, _covariance(precision), key,
                num_chains=settings.num_chains, num_samples=settings.num_samples, rounds=rounds,
            )

        # Compiled on first use only: most samplers never run them.
        self._laplace = program(jax.vmap(laplace) if batched else laplace, "laplace")
        self._independent = program(jax.vmap(independent, in_axes=(0, 0, 0, None)) if batched else independent, "independent")
        self._unravel = jax.vmap(unravel) if batched else unravel
        ravel = lambda tree: ravel_pytree(tree)[0]  # noqa: E731
        self._ravel = jax.vmap(ravel) if batched else ravel
        self._positions = jax.tree_util.tree_map(np.asarray, unravel(jnp.arange(self.dim)))

    def laplace(self, args: tuple) -> tuple[dict, np.ndarray, dict]:
        """A posterior mode in the start's coordinates and the potential's Hessian there.

        Returns the mode by site, the Hessian of the flat unconstrained vector, and each site's
        positions in that vector (with a leading data-set axis on the first two when batched).
        For a sampler built without ``start``, the sampling coordinates are the start's.
        (:mod:`bayescale.hierarchy` uses it to decide which family coordinates the data pin down.)
        """
        mode, hessian = self._laplace(args)
        return jax.tree_util.tree_map(np.asarray, self._unravel(mode)), np.asarray(hessian), self._positions

    def _started(self, keys, args: tuple):
        """Every chain's start (its NUTS state and whitening), searched again where it ran off.

        A mode search can run off to a spike where the density is unbounded: a chain of a
        two-family hierarchical fit stopped at potential -2e38 with family deviations of -140
        sd, and its Hessian had no Cholesky factor, so every draw was NaN. Chains whose start
        has a non-finite potential or whitening, or an unconstrained value beyond
        :data:`MAX_START`, take the start of a search from fresh keys (up to
        :data:`START_ATTEMPTS` searches). The compiled start program is the same for every
        attempt, so chains that start well are untouched.
        """
        states = self._start(keys, args)
        for attempt in range(1, START_ATTEMPTS):
            state, (shift, scale) = states
            usable = np.isfinite(np.asarray(state.potential_energy)) & np.all(np.isfinite(np.asarray(scale)), axis=(-2, -1))
            usable &= np.all(np.abs(np.asarray(shift)) < MAX_START, axis=-1)
            if usable.all():
                break
            fresh_keys = jax.vmap(lambda key: jax.random.fold_in(key, attempt))(keys.reshape(-1, keys.shape[-1])).reshape(keys.shape)
            fresh = self._start(fresh_keys, args)
            states = jax.tree_util.tree_map(
                lambda old, new: jnp.where(usable.reshape(usable.shape + (1,) * (jnp.ndim(old) - usable.ndim)), old, new), states, fresh
            )
        return states

    def run(self, rng_key, args: tuple, *, progress: bool = False) -> Draws:
        """Optimise, warm up and sample every chain.

        Parameters
        ----------
        rng_key
            JAX PRNG key, split into one per chain; when batched, one key per data set
            (shape ``(K, 2)``), so that a data set's draws do not depend on its batch.
        args
            The model's arguments (with a leading data-set axis when batched).
        progress
            Report warm-up and sampling progress on stderr.

        Returns
        -------
        Draws
        """
        s = self.settings
        started = time.perf_counter()
        if self.batched:
            keys = jax.vmap(lambda key: jax.random.split(key, s.num_chains))(rng_key)
        else:
            keys = jax.random.split(rng_key, s.num_chains)
        states = self._started(keys, args)
        draw_axis = 2 if self.batched else 1  # after the (data-set and) chain axes
        kept = []
        for phase, total in (("warm-up", s.num_warmup), ("sampling", s.num_samples)):
            done = 0
            while done < total:
                steps = min(CHUNK, total - done)
                states, buffer = self._advance(states, args, steps)
                if phase == "sampling":
                    kept.append({k: np.take(np.asarray(b), np.arange(steps), axis=draw_axis) for k, b in buffer.items()})
                else:
                    jax.block_until_ready(states)
                done += steps
                _report(progress, f"{phase} {done}/{total} ({time.perf_counter() - started:.1f} s)", final=done == total)
        collected = {k: np.concatenate([chunk[k] for chunk in kept], axis=draw_axis) for k in kept[0]}
        samples = self._constrain(jnp.asarray(collected.pop("z")), args)
        self.runs += 1
        return Draws(
            samples={k: np.asarray(v) for k, v in samples.items()},
            stats={STATISTICS[k]: v for k, v in collected.items()},
            seconds=time.perf_counter() - started,
        )

    def run_independent(self, rng_key, args: tuple, mode: dict | None = None, rounds: int = independence.ROUNDS) -> Draws:
        """Draw every chain by independence Metropolis-Hastings from a proposal adapted to the
        posterior (:mod:`bayescale.independence`), instead of NUTS.

        For small posteriors (a handful of parameters) whose log density is cheap: every
        evaluation is vectorised, with no sequential leapfrog steps. Chains are exact MCMC,
        but only as good as the proposal's coverage: check the returned ``pareto_k`` (one per
        data set when batched) against :data:`bayescale.independence.MAX_PARETO_K`, as well as
        R-hat and the effective sample size.

        Parameters
        ----------
        rng_key
            JAX PRNG key (one per data set, shape ``(K, 2)``, when batched).
        args
            The model's arguments (with a leading data-set axis when batched).
        mode
            The posterior mode in the start's coordinates, as :meth:`laplace` returns it, when
            known already; found here otherwise.
        rounds
            Adaptation rounds of the proposal (any number runs in the same compiled program).

        Returns
        -------
        Draws
            Statistics are ``diverging`` (never) and ``acceptance_rate``; ``pareto_k`` is set.
        """
        started = time.perf_counter()
        z_start = self._laplace(args)[0] if mode is None else self._ravel(mode)
        z, accept_prob, log_weights = self._independent(rng_key, args, z_start, jnp.asarray(rounds))
        samples = self._constrain(z, args)
        accept_prob = np.asarray(accept_prob)
        return Draws(
            samples={k: np.asarray(v) for k, v in samples.items()},
            stats={"diverging": np.zeros(accept_prob.shape, bool), "acceptance_rate": accept_prob},
            seconds=time.perf_counter() - started,
            pareto_k=independence.pareto_k(np.asarray(log_weights)),
        )


def say(message: str, progress: bool) -> None:
    """Print a ``bayescale:`` progress line on stderr when ``progress`` is true."""
    if progress:
        print(f"bayescale: {message}", file=sys.stderr, flush=True)


def _report(progress: bool, message: str, final: bool) -> None:
    """Sampler progress: updated in place on a terminal, only the final line otherwise."""
    if progress and sys.stderr.isatty():
        print(f"\rbayescale: {message}", end="\n" if final else "", file=sys.stderr, flush=True)
    elif final:
        say(message, progress)


_SAMPLERS: dict = {}


def sampler_for(key, model_factory, args: tuple, settings: Settings, *, batched: bool = False, devices=None, start=None) -> Sampler:
    """The cached :class:`Sampler` for ``key`` (e.g. a card's text), settings, devices and data shape.

    ``model_factory()`` builds the model the first time only, so a refit reuses both the
    model function and the compiled programs that close over it.
    """
    shapes = tuple((leaf.shape, str(leaf.dtype)) for leaf in jax.tree_util.tree_leaves(args))
    structure = jax.tree_util.tree_structure(args)
    cache_key = (key, settings, batched, devices, shapes, structure)
    if cache_key not in _SAMPLERS:
        _SAMPLERS[cache_key] = Sampler(
            model_factory(), args, settings, batched=batched, devices=devices, start=start, key=repr(cache_key)
        )
    return _SAMPLERS[cache_key]


def clear_samplers() -> None:
    """Drop every cached :class:`Sampler` and JAX's in-memory compilation caches.

    Each compiled program keeps its machine code mapped in memory; a long-running process that
    fits many differently shaped models (a test suite: ~20,000 memory maps after 3 test modules)
    can reach the kernel's limit on maps (``vm.max_map_count``, 65,530 by default), where
    loading the next program crashed the process (a segmentation fault in JAX's cache read).
    A later fit recompiles, or reads the program back from the persistent cache.
    """
    _SAMPLERS.clear()
    jax.clear_caches()


#: Platforms a fit can be placed on (JAX's backend names).
PLATFORMS = ("cpu", "gpu", "tpu")


def local_devices(device: str | None = None) -> list:
    """This process's devices of a platform (``"cpu"``, ``"gpu"``, ``"tpu"``), or of JAX's
    default platform when ``device`` is None.

    Raises
    ------
    ValueError
        If the platform is unknown or has no device here; the message says what to install.
    """
    if device is None:
        return jax.local_devices()
    if device not in PLATFORMS:
        raise ValueError(f"device must be one of {', '.join(PLATFORMS)} (or None for JAX's default), got {device!r}")
    try:
        found = jax.local_devices(backend=device)
    except RuntimeError:  # JAX raises when the backend is not installed or finds no device
        found = []
    if not found:
        hint = "install a CUDA build of JAX (pip install 'bayescale[gpu]') on a machine with an NVIDIA GPU" if device == "gpu" else f"run on a machine with a {device.upper()}"
        raise ValueError(f"no {device} device is available to JAX here ({jax.default_backend()} only); {hint}, or use device='cpu'")
    return found


@contextmanager
def on_device(device: str | None):
    """Place every computation in the block on the platform ``device`` (None: JAX's default)."""
    if device is None:
        yield
        return
    with jax.default_device(local_devices(device)[0]):
        yield


def devices_for(chain_method: str, num_chains: int, device: str | None = None):
    """Devices to split ``num_chains`` chains across, or ``None`` for one vectorised program.

    ``"auto"`` and ``"parallel"`` split the chains when there are enough local devices:
    on CPU one device per chain (import bayescale makes at least 4 CPU devices), on GPU/TPU
    as many devices as divide the chains evenly. ``"vectorized"`` keeps every chain on the
    default device.

    Why one chain per CPU device: a batched LAPACK call (the Hessian's eigendecomposition,
    the dense mass matrix's Cholesky factor) splits its batch over XLA's intra-op thread pool
    and blocks a pool thread until the pieces finish. With several CPU devices each running
    such a call, every pool thread can end up blocked, waiting on pieces that no thread is
    free to run; a 64-data-set batch on 2 CPU devices hung this way (jaxlib 0.10.2). A single
    chain per device makes every such call unbatched.
    """
    if chain_method not in ("auto", "parallel", "vectorized"):
        raise ValueError(f"chain_method must be 'auto', 'parallel' or 'vectorized', got {chain_method!r}")
    if chain_method == "vectorized" or num_chains < 2:
        return None
    devices = local_devices(device)
    if devices[0].platform == "cpu":
        return tuple(devices[:num_chains]) if len(devices) >= num_chains else None
    return _even_split(devices, num_chains)


def devices_for_batches(batch_size: int, device: str | None = None):
    """Devices to split batches of ``batch_size`` data sets across: accelerators only.

    On CPU a batch runs on one device; see :func:`devices_for` for the thread-pool deadlock
    that several CPU devices running batched LAPACK calls can reach.
    """
    devices = local_devices(device)
    return None if devices[0].platform == "cpu" else _even_split(devices, batch_size)


def _even_split(devices, items: int):
    """The most devices (at least 2) that share ``items`` evenly, or ``None``."""
    count = max(k for k in range(1, min(len(devices), items) + 1) if items % k == 0)
    return tuple(devices[:count]) if count > 1 else None


def enable_compilation_cache() -> None:
    """Turn on JAX's persistent compilation cache, so a new process loads compiled samplers.

    The folder is ``$BAYESCALE_COMPILATION_CACHE`` if set, else ``bayescale/jax`` under the
    user's cache folder (``$XDG_CACHE_HOME``, default ``~/.cache``); set the variable to
    ``0`` or ``off`` to leave the cache off. A cache folder the caller configured for JAX
    is left alone. Traced samplers are kept in its ``bayescale-programs`` subfolder
    (:func:`bayescale.programs.folder`), so that a new process does not trace them either.
    """
    if jax.config.jax_compilation_cache_dir:
        return
    folder = os.environ.get("BAYESCALE_COMPILATION_CACHE")
    if folder is not None and folder.strip().lower() in ("", "0", "off", "false", "no"):
        return
    if folder is None:
        folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bayescale", "jax")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return  # a read-only home: compile in memory as before
    jax.config.update("jax_compilation_cache_dir", folder)
    # Cache small programs too: a fresh process otherwise recompiles some 50 of them (~2 s).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
