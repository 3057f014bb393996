"""bayescale: Bayesian inference of neural scaling laws.

Importing bayescale turns on JAX's float64 mode: ``N**-alpha`` and small loss
differences lose precision in float32, and every law here is fitted in float64
on CPU (DESIGN.md section 4).

It also asks XLA for one CPU device per available core, and at least 4 (unless
``XLA_FLAGS`` already sets a count, or ``BAYESCALE_CPU_DEVICES`` gives one): NUTS
chains on separate devices each run their own loop, where chains vectorised on
one device all wait for the longest trajectory. On 2 cores this halved the wall
time of a 4-chain fit. It takes effect only if JAX has not started its CPU
backend yet, so import bayescale before running any JAX computation.
"""

import os

import jax


def _split_cpu_into_devices() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # At least one device per default chain (4): see bayescale.engine.devices_for for why.
    count = int(os.environ.get("BAYESCALE_CPU_DEVICES") or max(cores, 4))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


_split_cpu_into_devices()
jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"

from . import datasets  # noqa: E402
from .backtest import Backtest, backtest  # noqa: E402
from .data import DataError, RunTable  # noqa: E402
from .design import Design, suggest_runs  # noqa: E402
from .downstream import DownstreamFit  # noqa: E402
from .emergence import emergence  # noqa: E402
from .diagnostics import Diagnostics, ModelWarning, SamplerWarning  # noqa: E402
from .fit import Fit, fit, load  # noqa: E402
from .parallel import fit_many  # noqa: E402
from .spec import ModelSpec, available_cards  # noqa: E402

__all__ = [
    "Backtest",
    "DataError",
    "Design",
    "Diagnostics",
    "DownstreamFit",
    "Fit",
    "ModelSpec",
    "ModelWarning",
    "RunTable",
    "SamplerWarning",
    "__version__",
    "available_cards",
    "backtest",
    "datasets",
    "emergence",
    "fit",
    "fit_many",
    "load",
    "suggest_runs",
]
