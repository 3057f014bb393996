"""Many independent fits in one compiled program: ``fit_many(runs, by="task")``.

A thousand benchmark tasks, or a dozen families fitted separately, are the same
model on data sets of different sizes. Loss cards fit each group's law; a downstream
card fits each task's rise on its own (its prior is the card's prediction for a new task,
:meth:`bayescale.downstream.DownstreamSpec.lone_task_prior`), where :func:`bayescale.fit`
would pool the tasks. Each data set is padded to the largest (padding rows masked out of
the likelihood), and batches of them run as one program vectorised over data sets and
chains (:class:`bayescale.engine.Sampler` with ``batched=True``), each data set with its
own optimiser start and its own step-size and mass-matrix adaptation. Every batch has the
same shape, so the program is compiled once for the whole job.

A vectorised NUTS iteration lasts as long as its longest trajectory in the batch. Data sets
of similar difficulty (loss curves) batch well; downstream tasks do not (a task that has not
risen wants trees ten times longer than one rising inside the data): on 2 CPU cores, 8 tasks
ran at 0.47 fits/s one per batch against 0.30 four per batch. So a downstream card's tasks
are drawn first by independence Metropolis-Hastings (``sampler="auto"``,
:mod:`bayescale.independence`), whose batches do no sequential gradient steps and wait for no
task; the few tasks whose draws fail a check get a second, longer-adapted proposal (several,
where the batch has room), and those that fail again are refitted with NUTS, one per batch on CPU.

Batches can also go to a ``concurrent.futures`` executor: a local process pool
(:func:`process_pool`; spawned, never forked, because a forked JAX runtime
deadlocks) or a Ray cluster (:class:`RayExecutor`).
"""

from __future__ import annotations

import multiprocessing
import time
import warnings
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import downstream, independence
from .data import DataError, RunTable
from .diagnostics import SamplerWarning, diagnose
from .downstream import DownstreamFit, DownstreamSpec, NonCentredTasks, make_downstream_model
from .engine import Settings, devices_for_batches, enable_compilation_cache, on_device, sampler_for, say
from .fit import Fit, check_identifiable, to_inference_data
from .model import centre_of, centred_inputs, make_model
from .posterior import Posterior
from .spec import ModelSpec, is_downstream, load_card


def fit_many(
    runs: RunTable | pd.DataFrame,
    by: str = "family",
    model: str | Path | ModelSpec = "chinchilla",
    *,
    seed: int = 0,
    num_chains: int = 4,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    target_accept: float | None = None,
    max_tree_depth: int = 10,
    batch_size: int = 64,
    executor: Executor | None = None,
    device: str | None = None,
    sampler: str = "auto",
    progress: bool = True,
) -> dict[str, Fit | DownstreamFit]:
    """Fit one card separately to each group of rows, many groups per compiled program.

    Parameters
    ----------
    runs
        The observations, with a column ``by`` naming each row's group.
    by
        The grouping column: ``"family"``, ``"task"``, ``"seed"`` or any other column.
    model
        The card fitted to every group (name, path, :class:`~bayescale.ModelSpec` or
        :class:`~bayescale.downstream.DownstreamSpec`). A downstream card fits each group's tasks
        separately, so group by ``"task"``; each task's prior is the card's prediction for a
        new task (:meth:`~bayescale.downstream.DownstreamSpec.lone_task_prior`), and a group must hold one family.
    seed
        Seed of every random choice; group ``g`` (in sorted order) gets its own stream,
        so its draws do not depend on the batch it ran in.
    num_chains, num_warmup, num_samples, target_accept, max_tree_depth
        NUTS settings, as in :func:`bayescale.fit`.
    batch_size
        Data sets per compiled program. Larger batches use the vector units and devices
        better; with NUTS every data set in a batch waits for the slowest one (so NUTS refits
        of downstream tasks run one per batch on CPU: module docstring), and memory grows with
        ``batch_size * num_chains * num_samples``.
    executor
        Where batches run: ``None`` runs them here, one after another; a
        ``concurrent.futures.Executor`` (:func:`process_pool`, :class:`RayExecutor`)
        runs them there.
    device
        Where batches run: ``"cpu"``, ``"gpu"`` or ``"tpu"``; default JAX's default platform.
        On accelerators a batch is split across the platform's devices.
    sampler
        ``"auto"``: downstream tasks are drawn first by independence Metropolis-Hastings from
        an adapted proposal (:mod:`bayescale.independence`; no sequential leapfrog steps, so
        a batch does not wait for its slowest task), and any task whose draws fail a check
        (R-hat, ESS, the proposal's Pareto k) gets a second proposal, adapted longer from fresh
        random numbers (:data:`bayescale.independence.RETRY_ROUNDS`), and further ones in the
        places its batch would otherwise fill with copies; a task that fails every attempt is
        refitted with NUTS. Each task keeps its first attempt that passed every check, else the
        first with the fewest problems. Loss cards use NUTS.
        ``"nuts"``: NUTS for every group. A downstream fit's ``attrs["sampler"]`` says which made it.
        ``num_warmup`` and ``target_accept`` apply to NUTS only; the independence sampler
        keeps ``num_samples`` draws in each of ``num_chains`` chains.
    progress
        Print progress to stderr.

    Returns
    -------
    dict
        Group name -> :class:`~bayescale.Fit` (:class:`~bayescale.DownstreamFit` for a downstream
        card), in sorted order of the group names.
        Sampler problems are reported in one :class:`~bayescale.SamplerWarning` naming
        the groups concerned; each fit's ``diagnostics`` has the details.

    Raises
    ------
    bayescale.DataError
        If ``by`` is not a column, or a group cannot identify the card's parameters
        (the message names the group).
    """
    if not isinstance(runs, RunTable):
        runs = RunTable(runs)
    spec = load_card(model)
    if isinstance(spec, DownstreamSpec):
        if spec.predictor != "log_flops":
            raise ValueError(
                f"card {spec.name!r} links accuracy to a loss law fitted jointly with every task; fit_many "
                "fits tasks one at a time, so use bayescale.fit(runs, model=...) for it, or a card with "
                'predictor = "log_flops" (e.g. downstream-sigmoid)'
            )
        spec.lone_task_prior()  # a card it cannot state a lone task's prior for fails here, before any work
    elif spec.hierarchical:
        raise ValueError(
            f"card {spec.name!r} pools its groups in one fit, and fit_many fits each group on its own; "
            "use bayescale.fit(runs, model=...) for a hierarchical card, or a plain card here"
        )
    settings = Settings(num_chains, num_warmup, num_samples, target_accept or spec.target_accept, max_tree_depth)
    if sampler not in ("auto", "nuts"):
        raise ValueError(f'sampler must be "auto" or "nuts", got {sampler!r}')
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    groups = _split(runs, by, spec)
    names = list(groups)
    largest = max(len(table) for table in groups.values())
    prepare = _prepare_tasks if isinstance(spec, DownstreamSpec) else _prepare_losses
    prepared = {name: prepare(table, spec, largest) for name, table in groups.items()}

    devices = devices_for_batches(batch_size, device) if executor is None else None
    say(f"fitting card {spec.name!r} to {len(names)} groups by {by!r} (up to {largest} observations each)", progress)
    keys = {name: jax.random.fold_in(jax.random.PRNGKey(seed), index) for index, name in enumerate(names)}
    width = min(batch_size, len(names))
    run = dict(
        spec=spec, settings=settings, prepared=prepared, by=by, seed=seed,
        executor=executor, device=device, devices=devices, progress=progress,
    )
    started = time.perf_counter()
    first = [(name, keys[name]) for name in names]
    if sampler == "auto" and isinstance(spec, DownstreamSpec):
        fits = dict(zip(names, _fit_slots(first, width, "independence", **run)))
        retry = [name for name in names if not fits[name].diagnostics.ok]
        passed = len(names) - len(retry)
        say(f"{passed} of {len(names)} passed every check by independence sampling ({time.perf_counter() - started:.1f} s)", progress)
        if retry:
            # Most first failures are proposals that adapted badly by chance: adapt new ones
            # longer, from fresh random numbers (independence.RETRY_ROUNDS), in the same
            # compiled program (same width). The batches' spare places, which would otherwise
            # hold copies of a data set, give the failed tasks further independent attempts.
            slots = _attempts(retry, keys, _batch_width(width, devices))
            say(
                f"second attempt for {len(retry)}, adapting the proposal {independence.RETRY_ROUNDS} rounds "
                f"({len(slots)} attempts)", progress,
            )
            attempts = _fit_slots(slots, width, "independence", rounds=independence.RETRY_ROUNDS, **run)
            for name in retry:
                fits[name] = _best([fits[name]] + [fitted for (slot, _), fitted in zip(slots, attempts) if slot == name])
            retry = [name for name in retry if not fits[name].diagnostics.ok]
            say(f"{len(names) - len(retry)} of {len(names)} passed by independence sampling ({time.perf_counter() - started:.1f} s)", progress)
        if retry:
            say(f"refitting {len(retry)} with NUTS", progress)
            # A vectorised NUTS batch waits for its slowest task, and the tasks left here are
            # the hard ones: on CPU each runs alone (module docstring).
            cpu = (device or jax.default_backend()) == "cpu"
            refits = _fit_slots([(name, keys[name]) for name in retry], 1 if cpu else min(width, len(retry)), "nuts", **run)
            for name, refit in zip(retry, refits):
                fits[name] = _best([fits[name], refit])
    else:
        fits = dict(zip(names, _fit_slots(first, width, "nuts", **run)))
    say(f"{len(fits)} fits in {time.perf_counter() - started:.1f} s", progress)
    troubled = [name for name, fitted in fits.items() if not fitted.diagnostics.ok]
    if troubled:
        shown = ", ".join(troubled[:10]) + (f" and {len(troubled) - 10} more" if len(troubled) > 10 else "")
        warnings.warn(
            f"{len(troubled)} of {len(fits)} fits have sampler problems ({shown}); read "
            "fits[name].diagnostics.problems for each, and refit those groups with the advice given there",
            SamplerWarning,
            stacklevel=2,
        )
    return fits


def _fit_slots(
    slots: list[tuple[str, jax.Array]], width: int, method: str, *, rounds: int = independence.ROUNDS,
    spec, settings, prepared, by, seed, executor, device, devices, progress,
) -> list:
    """Fit each ``(group, key)`` of ``slots`` in batches of ``width`` with ``method``
    (``"nuts"``, or ``"independence"`` with ``rounds`` rounds of adaptation); one fit per slot."""
    width = _batch_width(width, devices)
    batches = [slots[i : i + width] for i in range(0, len(slots), width)]
    what = "NUTS" if method == "nuts" else "independence sampling"
    say(
        f"{what}: {len(slots)} fits in {len(batches)} batch(es) of {width}, {settings.num_chains} chains x "
        f"({settings.num_warmup if method == 'nuts' else 'adapted proposal'} + {settings.num_samples} draws)",
        progress,
    )
    started = time.perf_counter()
    payloads = [_payload(batch, prepared, width) for batch in batches]

    def fits_of(batch, result) -> list:
        samples, stats, chosen = result
        fits = []
        for position, (name, _) in enumerate(batch):
            pick = lambda arrays: {k: np.asarray(v[position]) for k, v in arrays.items()}  # noqa: E731
            fitted = prepared[name].posterior(pick(samples), pick(stats), pick(chosen), seed)
            fitted.idata.attrs["group"] = f"{by}={name}"
            fits.append(fitted)
        return fits

    if executor is None:
        # A batch's fits are built (InferenceData, checks: ~20 ms a data set, in NumPy and xarray)
        # in a thread while the next batch runs: XLA releases the GIL while it computes.
        with ThreadPoolExecutor(max_workers=1) as builder:
            built = []
            for number, (batch, payload) in enumerate(zip(batches, payloads), 1):
                result = _sample_batch(spec.text, settings, payload, device=device, devices=devices, method=method, rounds=rounds)
                built.append(builder.submit(fits_of, batch, result))
                say(f"batch {number}/{len(batches)} done ({time.perf_counter() - started:.1f} s)", progress)
            fits = [fitted for future in built for fitted in future.result()]
    else:
        futures = [
            executor.submit(_sample_batch, spec.text, settings, payload, device=device, method=method, rounds=rounds)
            for payload in payloads
        ]
        fits = [fitted for batch, future in zip(batches, futures) for fitted in fits_of(batch, future.result())]
    return fits


def _batch_width(width: int, devices) -> int:
    """Data sets per batch: ``width``, rounded up to a whole number per device."""
    return -(-width // len(devices)) * len(devices) if devices else width


def _attempts(names: list[str], keys: dict, width: int) -> list[tuple[str, jax.Array]]:
    """Slots for a second attempt at ``names``: each name once, then again in turn, until the
    last batch of ``width`` is full; attempt ``a`` of a name draws from its key folded with ``a``."""
    capacity = -(-len(names) // width) * width
    return [
        (names[i % len(names)], jax.random.fold_in(keys[names[i % len(names)]], 1 + i // len(names)))
        for i in range(capacity)
    ]


def _best(fits: list):
    """The first of ``fits`` (attempts at one group, in the order made) that passed every
    check, else the first with the fewest problems."""
    return min(fits, key=lambda fitted: len(fitted.diagnostics.problems))


def _split(runs: RunTable, by: str, spec: ModelSpec | DownstreamSpec) -> dict[str, RunTable]:
    data = runs.data
    if by not in data:
        raise DataError(f"cannot group by {by!r}: the data have no such column (columns: {', '.join(data.columns)})")
    if data[by].isna().any():  # schema columns (family, task, seed) were checked by RunTable already
        rows = data.index[data[by].isna().to_numpy()][:8]
        raise DataError(f"column {by!r} has missing values (rows {', '.join(map(str, rows))}); give every row a group")
    groups = {}
    for name, rows in sorted(data.groupby(by).indices.items(), key=lambda item: item[0]):
        table = runs.subset(rows, source=f"group {by}={name}")  # checked as a whole already
        if isinstance(spec, DownstreamSpec):
            tasks = table.data["task"].astype(str).unique() if "task" in table.data else []
            if len(tasks) > 1:
                raise DataError(
                    f"group {by}={name} holds {len(tasks)} tasks ({', '.join(tasks[:5])}); a downstream card in fit_many "
                    "fits each task on its own: group by 'task' (or pool the tasks with bayescale.fit)"
                )
            if len(table.families) > 1:
                raise DataError(
                    f"group {by}={name} holds {len(table.families)} families ({', '.join(table.families[:5])}); fit_many "
                    "fits one family per group: group by a column that separates families as well (e.g. task and "
                    "family joined), or pool them with bayescale.fit, which learns the families' shifts"
                )
        else:
            check_identifiable(table, spec, where=f"group {by}={name}")
        groups[str(name)] = table
    return groups


class _Group(NamedTuple):
    """One group's model arguments, padded to the batch's common length, and how its draws become a fit."""

    args: tuple
    # (samples, statistics, inputs chosen in the batch, seed) -> the group's fit
    posterior: Callable[[dict, dict, dict, int], Posterior]


def _prepare_losses(table: RunTable, spec: ModelSpec, length: int) -> _Group:
    """A loss card's arguments ``(x, log_loss, mask)``, padded to ``length`` rows."""
    data = table.data
    rows = len(data)
    centre = centre_of(table, spec)
    x = {k: np.asarray(v) for k, v in centred_inputs(data, centre).items()}
    log_loss = np.log(data["loss"].to_numpy(dtype=float))
    pad = length - rows
    # Padding rows sit at the centre with the mean loss, so their (masked) terms stay finite.
    padded_x = {k: np.concatenate([v, np.zeros(pad)]) for k, v in x.items()}
    mask = np.concatenate([np.ones(rows, bool), np.zeros(pad, bool)])
    log_loss = np.concatenate([log_loss, np.full(pad, log_loss.mean())])

    def posterior(samples: dict, stats: dict, chosen: dict, seed: int) -> Fit:
        idata = to_inference_data(samples, stats, spec, table, x, centre, seed)
        idata.attrs["target_accept"] = float(chosen["target_accept"])
        return Fit(idata=idata, spec=spec, diagnostics=diagnose(idata, list(spec.sampled_parameters)))

    return _Group((padded_x, log_loss, mask), posterior)


def _prepare_tasks(table: RunTable, spec: DownstreamSpec, length: int) -> _Group:
    """A downstream card's arguments ``(inputs,)`` for one task fitted alone, padded to ``length`` rows."""
    evals = downstream.evaluations(table, spec)
    centre = downstream.centre_of_evaluations(evals, spec)
    inputs = {k: np.asarray(v) for k, v in downstream.model_inputs(evals, spec, centre).items()}
    rows = len(evals.frame)
    # Padding repeats the last row (valid values, so its masked terms stay finite).
    padded = {k: np.pad(v, (0, length - rows), mode="edge") if v.shape[:1] == (rows,) else v for k, v in inputs.items()}
    padded["mask"] = np.arange(length) < rows

    def posterior(samples: dict, stats: dict, chosen: dict, seed: int) -> DownstreamFit:
        samples = {**samples, "p": samples["p"][..., :rows]}
        at = {**centre, "anchor": float(chosen["anchor"])}
        idata = downstream.to_inference_data(samples, stats, spec, table, evals, at, seed, inputs["centring"], pooled=False)
        idata.attrs["sampler"] = "independence" if "pareto_k" in chosen else "nuts"
        if "pareto_k" in chosen:
            idata.attrs["pareto_k"] = float(chosen["pareto_k"])
            idata.attrs["adaptation_rounds"] = int(chosen["rounds"])
        else:
            idata.attrs["target_accept"] = float(chosen["target_accept"])
        return DownstreamFit(idata=idata, spec=spec, diagnostics=downstream.downstream_diagnostics(idata, spec))

    return _Group((padded,), posterior)


def _payload(batch: list[tuple[str, jax.Array]], prepared: dict, width: int):
    """Stacked arguments and keys of one batch of ``(group, key)`` slots, filled up to ``width``
    with copies of its first slot (their draws are discarded) so that every batch has one shape."""
    filled = batch + [batch[0]] * (width - len(batch))
    args = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *[prepared[name].args for name, _ in filled])
    return args, np.stack([np.asarray(key) for _, key in filled])


def _sample_batch(
    card_text: str, settings: Settings, payload, device: str | None = None, devices=None, method: str = "nuts",
    rounds: int = independence.ROUNDS,
):
    """Run one batch (here or in a worker process, on ``device``'s platform) with ``method``
    (``"nuts"``, or ``"independence"`` with ``rounds`` rounds of adaptation:
    :meth:`bayescale.engine.Sampler.run_independent`).

    Returns NumPy samples and statistics, and what was chosen or measured here per data set
    (a lone task's onset anchor, :func:`bayescale.downstream.anchor_lone_tasks`; the
    independence sampler's Pareto k and adaptation rounds; NUTS's target acceptance rate)."""
    enable_compilation_cache()
    args, keys = payload
    lone_tasks = is_downstream(card_text)
    if lone_tasks:
        spec = DownstreamSpec.from_toml(card_text)
        key, factory, start = ("one task", card_text), lambda: make_downstream_model(spec, 1, 1, pooled=False), NonCentredTasks(spec, pooled=False)
    else:
        spec = ModelSpec.from_toml(card_text)
        key, factory, start = card_text, lambda: make_model(spec), None
    # A batch of one (NUTS refits on CPU) runs unbatched and gets its data-set axis back at the
    # end: one vmap fewer to trace, which was ~3 s of the ~8 s a fresh process took to start it.
    single = len(keys) == 1 and method == "nuts" and not devices
    identity = lambda tree: tree  # noqa: E731
    unbatch = (lambda tree: jax.tree_util.tree_map(lambda leaf: leaf[0], tree)) if single else identity
    rebatch = (lambda tree: jax.tree_util.tree_map(lambda leaf: leaf[None], tree)) if single else identity
    with on_device(device):
        args = jax.tree_util.tree_map(jnp.asarray, args)
        sampler = sampler_for(key, factory, unbatch(args), settings, batched=not single, devices=devices, start=start)
        chosen, mode = {}, None
        if lone_tasks:
            mode = rebatch(sampler.laplace(unbatch(args))[0])
            chosen["anchor"] = downstream.anchor_lone_tasks(spec, mode, *args)
            args = ({**args[0], "anchor": jnp.asarray(chosen["anchor"])},)
        if method == "independence":
            draws = sampler.run_independent(jnp.asarray(keys), args, mode, rounds)
            chosen["pareto_k"] = draws.pareto_k
            chosen["rounds"] = np.full(len(keys), rounds)
        else:
            draws = sampler.run(jnp.asarray(unbatch(keys)), unbatch(args))
            chosen["target_accept"] = np.full(len(keys), settings.target_accept)  # for the divergence advice
    return rebatch((draws.samples, draws.stats)) + (chosen,)


def process_pool(workers: int = 2) -> ProcessPoolExecutor:
    """A local pool of worker processes for :func:`fit_many`, started by *spawning*.

    Forking a process after JAX has started its runtime deadlocks, so the pool never
    forks. Each worker compiles the sampler once (or loads it from the persistent
    compilation cache) and reuses it for every batch it receives.

    Parameters
    ----------
    workers
        Worker processes; each should have a core or more to itself.

    Returns
    -------
    concurrent.futures.ProcessPoolExecutor
    """
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


class RayExecutor(Executor):
    """A ``concurrent.futures`` executor that runs each call as a Ray task.

    Parameters
    ----------
    address
        Ray cluster address (``"auto"`` joins a running cluster, ``"ray://host:10001"`` a
        remote one); ``None`` starts a local Ray instance.
    num_cpus
        CPUs each task reserves (a batch uses all the cores it is given).
    **init_kwargs
        Passed to ``ray.init`` when Ray is not yet initialised (e.g. ``runtime_env``).

    Notes
    -----
    Needs the ``distributed`` extra (``pip install bayescale[distributed]``), and bayescale
    installed on every node of the cluster.
    """

    def __init__(self, address: str | None = None, num_cpus: float = 1, **init_kwargs):
        try:
            import ray
        except ImportError:
            raise ImportError("RayExecutor needs Ray: pip install 'bayescale[distributed]'") from None
        if not ray.is_initialized():
            with warnings.catch_warnings():
                # Ray launches its own daemons by fork + exec. JAX warns at any fork, but the child
                # runs no JAX code before exec replaces it, so the deadlock it warns of cannot occur.
                warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
                ray.init(address=address, **init_kwargs)
        self._ray = ray
        self._num_cpus = num_cpus

    def submit(self, fn, /, *args, **kwargs) -> Future:
        """Run ``fn(*args, **kwargs)`` as a Ray task; returns its ``concurrent.futures.Future``."""
        task = self._ray.remote(num_cpus=self._num_cpus)(fn)
        return task.remote(*args, **kwargs).future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Leave the Ray cluster (the cluster itself keeps running)."""
        self._ray.shutdown()
