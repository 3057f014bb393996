"""bayescale: Bayesian inference of neural scaling laws.

Importing bayescale turns on JAX's float64 mode: ``N**-alpha`` and small loss
differences lose precision in float32, and every law here is fitted in float64
on CPU (DESIGN.md section 4).
"""

import jax

jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"

from . import datasets  # noqa: E402
from .data import DataError, RunTable  # noqa: E402
from .diagnostics import Diagnostics, SamplerWarning  # noqa: E402
from .fit import Fit, fit, load  # noqa: E402
from .spec import ModelSpec, available_cards  # noqa: E402

__all__ = [
    "DataError",
    "Diagnostics",
    "Fit",
    "ModelSpec",
    "RunTable",
    "SamplerWarning",
    "__version__",
    "available_cards",
    "datasets",
    "fit",
    "load",
]
