"""ArviZ, imported once without its import-time FutureWarning about the 1.0 refactor.

The package targets arviz 0.23 (the last release for Python 3.11); the warning
announces arviz 1.x and says nothing about bayescale's use of it.
"""

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

__all__ = ["az"]
