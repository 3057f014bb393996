"""RunTable: a validated, tidy table of training runs (one row per observation).

The schema is DESIGN.md section 3. Validation names the fix and gives row
numbers; nothing is dropped silently. Columns outside the schema are kept as
metadata, unless their name looks like a misspelt schema column, which is an
error with a "did you mean".
"""

from __future__ import annotations

import difflib
import hashlib
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

#: Schema columns and their meaning (DESIGN.md section 3).
SCHEMA: dict[str, str] = {
    "family": "model family (architecture / data recipe / optimiser setting)",
    "seed": "training seed",
    "run": "explicit run id",
    "params": "parameter count N",
    "tokens": "tokens seen at this observation D",
    "flops": "training compute C (default 6*N*D)",
    "step": "checkpoint step",
    "is_final": "whether the row is the run's final checkpoint",
    "loss": "modelled loss in nats",
    "task": "downstream task name",
    "correct": "number of items answered correctly",
    "accuracy": "fraction of items answered correctly",
    "n_items": "number of items in the task",
    "chance": "accuracy of random guessing",
}
#: Columns that must be finite and strictly positive where present.
POSITIVE_COLUMNS = ("params", "tokens", "flops", "loss", "n_items")
#: Default family name when the table has no ``family`` column.
DEFAULT_FAMILY = "default"


class DataError(ValueError):
    """Input data that bayescale cannot use; the message says how to fix it."""


def _rows_text(positions: Iterable[int], offset: int, limit: int = 8) -> str:
    positions = [int(p) + offset for p in positions]
    shown = ", ".join(str(p) for p in positions[:limit])
    more = f" and {len(positions) - limit} more" if len(positions) > limit else ""
    return f"{shown}{more}"


class RunTable:
    """A validated table of scaling runs.

    Parameters
    ----------
    data
        Tidy data, one row per observation, with the columns of
        :data:`SCHEMA` (any subset; which ones a law needs is checked at fit
        time by :meth:`require`). Other columns are kept as metadata.
    source
        Where the data came from, used in error messages.
    row_offset, row_label
        How error messages number rows: ``row_offset`` is added to the 0-based
        position and ``row_label`` names the unit (``from_csv`` uses 2 and
        ``"line"``, so messages give the line number in the file).

    Raises
    ------
    DataError
        If a column is misspelt, a value is non-finite or non-positive, an
        accuracy is outside [0, 1], or two rows are identical.

    Examples
    --------
    >>> runs = RunTable(pd.DataFrame({"params": [1e8, 4e8], "tokens": [2e9, 8e9], "loss": [3.1, 2.8]}))
    >>> runs.data["flops"].tolist()
    [1.2e+18, 1.92e+19]
    """

    def __init__(self, data: pd.DataFrame, *, source: str = "the table", row_offset: int = 0, row_label: str = "row"):
        if not isinstance(data, pd.DataFrame):
            raise DataError(f"RunTable needs a pandas DataFrame, got {type(data).__name__}")
        self.source = source
        self._row_offset = row_offset
        self._row_label = row_label
        df = data.reset_index(drop=True).copy()
        self._check_column_names(df)
        if len(df) == 0:
            raise DataError(f"{source} has no rows; add at least one observation per run")
        self._check_values(df)
        if "flops" not in df and {"params", "tokens"} <= set(df.columns):
            # Standard dense-transformer training compute (Kaplan et al. 2020, sec. 2.1).
            df["flops"] = 6.0 * df["params"].astype(float) * df["tokens"].astype(float)
        if "family" not in df:
            df["family"] = DEFAULT_FAMILY
        df["family"] = df["family"].astype(str)
        self._data = df

    # --- construction ------------------------------------------------------

    @classmethod
    def from_csv(cls, path: str | Path, **read_csv_kwargs) -> "RunTable":
        """Read and validate a CSV file; error messages give file line numbers.

        Parameters
        ----------
        path
            The CSV file, with a header row naming the schema's columns.
        **read_csv_kwargs
            Passed to :func:`pandas.read_csv` (``sep``, ``comment``, ...).

        Returns
        -------
        RunTable
        """
        path = Path(path)
        if not path.exists():
            raise DataError(f"no such file: {path}")
        try:
            df = pd.read_csv(path, **read_csv_kwargs)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise DataError(f"could not read {path} as CSV ({err}); save it as comma-separated text with a header row") from None
        return cls(df, source=str(path), row_offset=2, row_label="line")

    @classmethod
    def from_parquet(cls, path: str | Path) -> "RunTable":
        """Read and validate a Parquet file (needs pyarrow or fastparquet).

        Parameters
        ----------
        path
            The Parquet file.

        Returns
        -------
        RunTable
        """
        path = Path(path)
        if not path.exists():
            raise DataError(f"no such file: {path}")
        return cls(pd.read_parquet(path), source=str(path))

    # --- validation --------------------------------------------------------

    def _rows(self, mask: np.ndarray) -> str:
        return f"{self._row_label}s {_rows_text(np.flatnonzero(mask), self._row_offset)}"

    def _check_column_names(self, df: pd.DataFrame) -> None:
        for column in df.columns:
            if not isinstance(column, str):
                raise DataError(f"column names must be strings; {self.source} has {column!r}")
            if column in SCHEMA:
                continue
            close = difflib.get_close_matches(column.lower(), [c for c in SCHEMA if c not in df.columns], n=1, cutoff=0.8)
            if close or column.lower() in SCHEMA:
                guess = close[0] if close else column.lower()
                raise DataError(
                    f"unknown column {column!r} in {self.source}; did you mean {guess!r}? "
                    f"Rename it (schema columns: {', '.join(SCHEMA)})"
                )
        duplicated = df.columns[df.columns.duplicated()].tolist()
        if duplicated:
            raise DataError(f"{self.source} has repeated column names {duplicated}; keep one of each")

    def _check_values(self, df: pd.DataFrame) -> None:
        for column in POSITIVE_COLUMNS + ("correct", "accuracy", "chance", "step"):
            if column not in df:
                continue
            values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)
            bad = ~np.isfinite(values)
            if bad.any():
                raise DataError(
                    f"column {column!r} has {bad.sum()} missing or non-numeric values ({self._rows(bad)} of "
                    f"{self.source}); fill them in or remove those rows explicitly"
                )
            df[column] = values
            if column in POSITIVE_COLUMNS and (values <= 0).any():
                bad = values <= 0
                raise DataError(
                    f"column {column!r} has {bad.sum()} non-positive values ({self._rows(bad)} of {self.source}); "
                    f"scaling laws need {column} > 0 (is it in the right units, e.g. a count, not millions?)"
                )
        for column in ("accuracy", "chance"):
            if column in df and ((df[column] < 0) | (df[column] > 1)).any():
                bad = ((df[column] < 0) | (df[column] > 1)).to_numpy()
                raise DataError(
                    f"column {column!r} has values outside [0, 1] ({self._rows(bad)} of {self.source}); "
                    "give it as a fraction, not a percentage"
                )
        if {"correct", "n_items"} <= set(df.columns) and (df["correct"] > df["n_items"]).any():
            bad = (df["correct"] > df["n_items"]).to_numpy()
            raise DataError(f"'correct' exceeds 'n_items' in {self._rows(bad)} of {self.source}")
        for column in ("family", "seed", "run", "task"):
            if column in df and df[column].isna().any():
                bad = df[column].isna().to_numpy()
                raise DataError(
                    f"column {column!r} has missing values ({self._rows(bad)} of {self.source}); "
                    "give every row a value or drop the column"
                )
        dup = df.duplicated(keep="first").to_numpy()
        if dup.any():
            raise DataError(
                f"{self.source} has {dup.sum()} rows identical to an earlier row ({self._rows(dup)}); "
                "remove the duplicates, or add a 'seed' or 'run' column if they are separate runs"
            )

    def require(self, inputs: Iterable[str], exponents: dict[str, str], target: str = "loss") -> None:
        """Check the table can identify a law that reads ``inputs``.

        Parameters
        ----------
        inputs
            Columns the law reads (``params``, ``tokens`` or ``flops``).
        exponents
            For each input, the name of the exponent it identifies; the table
            needs at least two distinct values of that input.
        target
            The observed column (``loss``).

        Raises
        ------
        DataError
            If a column is missing or an exponent cannot be identified.
        """
        df = self._data
        for column in (*inputs, target):
            if column not in df:
                close = difflib.get_close_matches(column, list(df.columns), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}? rename it)" if close else ""
                raise DataError(
                    f"{self.source} has no {column!r} column{hint}; this model needs columns "
                    f"{', '.join((*inputs, target))} ({SCHEMA.get(column, column)})"
                )
        for column in inputs:
            distinct = df[column].nunique()
            if distinct < 2:
                raise DataError(
                    f"{self.source} has a single value of {column!r} ({df[column].iloc[0]:.4g}), which cannot "
                    f"identify the exponent {exponents[column]!r}; add runs at two or more {column} values "
                    f"(three or more spread over a decade or more is better), or choose a model card that "
                    f"does not vary with {column}"
                )

    # --- access ------------------------------------------------------------

    @property
    def data(self) -> pd.DataFrame:
        """A copy of the validated table (with ``flops`` and ``family`` filled in)."""
        return self._data.copy()

    @property
    def families(self) -> list[str]:
        """Family names, in order of first appearance."""
        return list(pd.unique(self._data["family"]))

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        columns = [c for c in self._data.columns if c in SCHEMA]
        return f"RunTable({len(self)} observations, {len(self.families)} families, columns {columns})"

    def family_codes(self) -> np.ndarray:
        """Integer code of each row's family, indexing :attr:`families`."""
        return category_codes(self._data["family"], self.families)

    def subset(self, rows: np.ndarray, *, source: str) -> "RunTable":
        """Some of the rows as a table of their own, without checking them again (they passed).

        Parameters
        ----------
        rows
            A boolean mask over the rows, or row positions.
        source
            How messages name the new table.

        Returns
        -------
        RunTable

        Raises
        ------
        bayescale.DataError
            If no row is selected.
        """
        rows = np.asarray(rows)
        positions = np.flatnonzero(rows) if rows.dtype == bool else rows
        if len(positions) == 0:
            raise DataError(f"{source} has no rows; add at least one observation per run")
        table = object.__new__(RunTable)
        # Its rows are numbered afresh, as in RunTable(rows): they are no longer the file's lines.
        table.source, table._row_offset, table._row_label = source, 0, "row"
        table._data = self._data.iloc[positions].reset_index(drop=True)
        return table

    def hash(self) -> str:
        """SHA-256 of the table's canonical CSV text: names the exact data a fit saw."""
        text = self._data.to_csv(index=False, float_format="%.17g")
        return hashlib.sha256(text.encode()).hexdigest()

    def run_ids(self) -> np.ndarray:
        """Integer id of each row's training run.

        A ``run`` column says it directly. Otherwise rows sharing ``family``, ``params`` and
        ``seed`` (where present) are one run when the table has a ``step`` column (they are
        its checkpoints), and each row is its own run when it has none (final losses only).

        Raises
        ------
        DataError
            If two rows of what would be one run have the same ``step``: they are separate
            runs (e.g. the same size trained for two token budgets), so add a ``run`` column.
        """
        df = self._data
        if "run" in df:
            return pd.factorize(df["run"].astype(str))[0]
        if "step" not in df:
            return np.arange(len(df))
        keys = [c for c in ("family", "params", "seed") if c in df]
        repeated = df.duplicated(subset=[*keys, "step"], keep=False).to_numpy()
        if repeated.any():
            raise DataError(
                f"{self.source} has rows with the same {', '.join(keys)} and step ({self._rows(repeated)}), so they "
                "cannot be checkpoints of one run; add a 'run' column naming each training run"
            )
        return df.groupby(keys, sort=False).ngroup().to_numpy()

    def fraction_of_training(self) -> np.ndarray:
        """Each row's tokens as a fraction of its run's final tokens (1.0 for final checkpoints).

        A run's final tokens are those of its row marked ``is_final``, else its largest.
        """
        df = self._data.assign(_run=self.run_ids())
        if "is_final" in df:
            final = df[df["is_final"].astype(bool)].groupby("_run")["tokens"].max()
            final = final.reindex(df["_run"].unique()).fillna(df.groupby("_run")["tokens"].max())
        else:
            final = df.groupby("_run")["tokens"].max()
        return (df["tokens"] / df["_run"].map(final)).to_numpy(dtype=float)

    def drop_early_checkpoints(self, min_fraction_of_training: float | None = None, min_tokens: float | None = None) -> "RunTable":
        """Drop checkpoints taken early in their run, saying how many.

        Early checkpoints sit far above the loss a run trained for that many tokens would
        reach (the learning rate is still high under a cosine schedule) and they carry
        warm-up transients; Choshen et al. (2024, "A Hitchhiker's Guide to Scaling Law
        Estimation") found that fitting them hurt predictions.

        Parameters
        ----------
        min_fraction_of_training
            Keep rows whose tokens are at least this fraction of their run's final tokens
            (e.g. 0.1); see :meth:`fraction_of_training`.
        min_tokens
            Keep rows with at least this many tokens.
        """
        if "tokens" not in self._data:
            raise DataError(f"{self.source} has no 'tokens' column, so checkpoints cannot be told apart by training progress")
        early = np.zeros(len(self), dtype=bool)
        reasons = []
        if min_fraction_of_training is not None:
            if not 0 < min_fraction_of_training <= 1:
                raise DataError(f"min_fraction_of_training must be in (0, 1], got {min_fraction_of_training}")
            early |= self.fraction_of_training() < min_fraction_of_training
            reasons.append(f"before {min_fraction_of_training:.0%} of their run's tokens")
        if min_tokens is not None:
            early |= self._data["tokens"].to_numpy(dtype=float) < min_tokens
            reasons.append(f"below {min_tokens:.3g} tokens")
        if early.all():
            raise DataError(f"every row of {self.source} is an early checkpoint by that rule ({' or '.join(reasons)}); relax it")
        return self.drop(early, f"checkpoints {' or '.join(reasons)}") if reasons else self

    def drop(self, mask: np.ndarray | pd.Series, reason: str) -> "RunTable":
        """Return a table without the rows where ``mask`` is true, saying how many and why.

        Parameters
        ----------
        mask
            Boolean per row; true rows are removed.
        reason
            Said to the user on stderr, e.g. ``"flagged as outliers by Epoch AI"``.
        """
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(self),):
            raise DataError(f"drop needs one boolean per row ({len(self)}), got shape {mask.shape}")
        print(f"bayescale: dropped {mask.sum()} of {len(self)} rows: {reason}", file=sys.stderr)
        return self.subset(~mask, source=self.source)


def category_codes(values: pd.Series, categories: list[str]) -> np.ndarray:
    """Each value's position in ``categories`` (every value is one of them), as int32."""
    return pd.Index(categories).get_indexer(values).astype(np.int32)
