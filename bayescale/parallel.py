"""Many independent fits in one compiled program: ``fit_many(runs, by="task")``.

A thousand benchmark tasks, or a dozen families fitted separately, are the same
model on data sets of different sizes. Each data set is padded to the largest
(padding rows masked out of the likelihood), and batches of them run as one
program vectorised over data sets and chains (:class:`bayescale.engine.Sampler`
with ``batched=True``), each data set with its own optimiser start and its own
step-size and mass-matrix adaptation. Every batch has the same shape, so the
program is compiled once for the whole job.

Batches can also go to a ``concurrent.futures`` executor: a local process pool
(:func:`process_pool`; spawned, never forked, because a forked JAX runtime
deadlocks) or a Ray cluster (:class:`RayExecutor`).
"""

from __future__ import annotations

import multiprocessing
import time
import warnings
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .data import DataError, RunTable
from .diagnostics import SamplerWarning, diagnose
from .engine import Settings, devices_for_batches, enable_compilation_cache, on_device, sampler_for, say
from .fit import Fit, check_identifiable, to_inference_data
from .model import centre_of, centred_inputs, make_model
from .spec import ModelSpec, load_card


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
    progress: bool = True,
) -> dict[str, Fit]:
    """Fit one card separately to each group of rows, many groups per compiled program.

    Parameters
    ----------
    runs
        The observations, with a column ``by`` naming each row's group.
    by
        The grouping column: ``"family"``, ``"task"``, ``"seed"`` or any other column.
    model
        The card fitted to every group (name, path or :class:`~bayescale.ModelSpec`).
    seed
        Seed of every random choice; group ``g`` (in sorted order) gets its own stream,
        so its draws do not depend on the batch it ran in.
    num_chains, num_warmup, num_samples, target_accept, max_tree_depth
        NUTS settings, as in :func:`bayescale.fit`.
    batch_size
        Data sets per compiled program. Larger batches use the vector units and devices
        better; every data set in a batch waits for the slowest one, and memory grows
        with ``batch_size * num_chains * num_samples``.
    executor
        Where batches run: ``None`` runs them here, one after another; a
        ``concurrent.futures.Executor`` (:func:`process_pool`, :class:`RayExecutor`)
        runs them there.
    device
        Where batches run: ``"cpu"``, ``"gpu"`` or ``"tpu"``; default JAX's default platform.
        On accelerators a batch is split across the platform's devices.
    progress
        Print progress to stderr.

    Returns
    -------
    dict
        Group name -> :class:`~bayescale.Fit`, in sorted order of the group names.
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
    if not isinstance(spec, ModelSpec):
        raise ValueError(
            f"card {spec.name!r} is a downstream card, which pools its tasks in one fit; use "
            "bayescale.fit(runs, model=...) for it (fit_many batches loss cards)"
        )
    if spec.hierarchical:
        raise ValueError(
            f"card {spec.name!r} pools its groups in one fit, and fit_many fits each group on its own; "
            "use bayescale.fit(runs, model=...) for a hierarchical card, or a plain card here"
        )
    settings = Settings(num_chains, num_warmup, num_samples, target_accept or spec.target_accept, max_tree_depth)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    groups = _split(runs, by, spec)
    names = list(groups)
    largest = max(len(table) for table in groups.values())
    prepared = {name: _prepare(table, spec, largest) for name, table in groups.items()}

    devices = devices_for_batches(batch_size, device) if executor is None else None
    width = min(batch_size, len(names))
    if devices:
        width = -(-width // len(devices)) * len(devices)  # a whole number of data sets per device
    batches = [names[i : i + width] for i in range(0, len(names), width)]
    say(
        f"fitting card {spec.name!r} to {len(names)} groups by {by!r} (up to {largest} observations each) in "
        f"{len(batches)} batch(es) of {width}: {num_chains} chains x ({num_warmup} warm-up + {num_samples} draws)",
        progress,
    )
    keys = {name: jax.random.fold_in(jax.random.PRNGKey(seed), index) for index, name in enumerate(names)}
    started = time.perf_counter()
    payloads = [_payload(batch, prepared, keys, width) for batch in batches]
    if executor is None:
        results = []
        for number, payload in enumerate(payloads, 1):
            results.append(_sample_batch(spec.text, settings, payload, device=device, devices=devices))
            say(f"batch {number}/{len(batches)} done ({time.perf_counter() - started:.1f} s)", progress)
    else:
        futures = [executor.submit(_sample_batch, spec.text, settings, payload, device=device) for payload in payloads]
        results = [future.result() for future in futures]

    fits = {}
    for batch, (samples, stats) in zip(batches, results):
        for position, name in enumerate(batch):
            group = prepared[name]
            x = {k: v[: len(group.table)] for k, v in group.x.items()}
            pick = lambda arrays: {k: np.asarray(v[position]) for k, v in arrays.items()}  # noqa: E731
            idata = to_inference_data(pick(samples), pick(stats), spec, group.table, x, group.centre, seed)
            idata.attrs["group"] = f"{by}={name}"
            fits[name] = Fit(idata=idata, spec=spec, diagnostics=diagnose(idata, list(spec.sampled_parameters)))
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


def _split(runs: RunTable, by: str, spec: ModelSpec) -> dict[str, RunTable]:
    data = runs.data
    if by not in data:
        raise DataError(f"cannot group by {by!r}: the data have no such column (columns: {', '.join(data.columns)})")
    if data[by].isna().any():  # schema columns (family, task, seed) were checked by RunTable already
        rows = data.index[data[by].isna().to_numpy()][:8]
        raise DataError(f"column {by!r} has missing values (rows {', '.join(map(str, rows))}); give every row a group")
    groups = {}
    for name, rows in data.groupby(by, sort=True):
        table = RunTable(rows.reset_index(drop=True), source=f"group {by}={name}")
        check_identifiable(table, spec, where=f"group {by}={name}")
        groups[str(name)] = table
    return groups


class _Group(NamedTuple):
    """One group's data, padded to the batch's common length."""

    table: RunTable
    x: dict
    log_loss: np.ndarray
    mask: np.ndarray
    centre: dict


def _prepare(table: RunTable, spec: ModelSpec, length: int) -> _Group:
    """Centred inputs, log losses and mask, padded to ``length`` rows."""
    data = table.data
    centre = centre_of(table, spec)
    x = {k: np.asarray(v) for k, v in centred_inputs(data, centre).items()}
    log_loss = np.log(data["loss"].to_numpy(dtype=float))
    pad = length - len(data)
    # Padding rows sit at the centre with the mean loss, so their (masked) terms stay finite.
    x = {k: np.concatenate([v, np.zeros(pad)]) for k, v in x.items()}
    mask = np.concatenate([np.ones(len(data), bool), np.zeros(pad, bool)])
    log_loss = np.concatenate([log_loss, np.full(pad, log_loss.mean())])
    return _Group(table, x, log_loss, mask, centre)


def _payload(batch: list[str], prepared: dict, keys: dict, width: int):
    """Stacked arguments and keys of one batch, filled up to ``width`` with copies of its
    first data set (their draws are discarded) so that every batch has one shape."""
    filled = batch + [batch[0]] * (width - len(batch))
    x = {k: np.stack([prepared[name].x[k] for name in filled]) for k in prepared[batch[0]].x}
    log_loss = np.stack([prepared[name].log_loss for name in filled])
    mask = np.stack([prepared[name].mask for name in filled])
    return (x, log_loss, mask), np.stack([np.asarray(keys[name]) for name in filled])


def _sample_batch(card_text: str, settings: Settings, payload, device: str | None = None, devices=None):
    """Run one batch (here or in a worker process, on ``device``'s platform); returns NumPy samples and statistics."""
    enable_compilation_cache()
    spec = ModelSpec.from_toml(card_text)
    (x, log_loss, mask), keys = payload
    with on_device(device):
        args = ({k: jnp.asarray(v) for k, v in x.items()}, jnp.asarray(log_loss), jnp.asarray(mask))
        sampler = sampler_for(card_text, lambda: make_model(spec), args, settings, batched=True, devices=devices)
        draws = sampler.run(jnp.asarray(keys), args)
    return draws.samples, draws.stats


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
