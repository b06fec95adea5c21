"""Reading an uploaded labels table (CSV or parquet of ``path,label[,split]``) without decoding more than the
limit: the row count is checked before the rows are read, and only the needed columns are read."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from engine.errors import UserError

__all__ = ["TABLE_NAMES", "TABLE_SUFFIXES", "MAX_TABLE_ROWS", "read_table"]

TABLE_NAMES = ("labels.csv", "labels.parquet")
TABLE_SUFFIXES = {".csv", ".parquet"}
MAX_TABLE_ROWS = 1_000_000


_TABLE_COLUMNS = ("path", "label", "split")


def _parquet_table(table: Path) -> pd.DataFrame:
    """Only the needed columns of a parquet table, after its row count (from the footer) is within the limit:
    a few MB of run-length-encoded column can decode to a billion rows."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(table) as parquet:
        rows = parquet.metadata.num_rows
        if rows > MAX_TABLE_ROWS:
            raise UserError(f"{table.name} has {rows:,} rows, over the limit of {MAX_TABLE_ROWS:,}")
        names = {str(n).strip().lower(): n for n in parquet.schema_arrow.names}
        wanted = [names[c] for c in _TABLE_COLUMNS if c in names]
        return parquet.read(columns=wanted or None).to_pandas() if wanted else pd.DataFrame(columns=list(names))


def _csv_table(table: Path) -> pd.DataFrame:
    """Only the needed columns and at most one row past the limit of a CSV table."""
    header = pd.read_csv(table, dtype=str, nrows=0, skipinitialspace=True)
    wanted = [c for c in header.columns if str(c).strip().lower() in _TABLE_COLUMNS]
    if not wanted:
        return header
    return pd.read_csv(table, dtype=str, keep_default_na=False, skipinitialspace=True, usecols=wanted,
                       nrows=MAX_TABLE_ROWS + 1)


def read_table(table: Path) -> pd.DataFrame:
    """A labels table (CSV or parquet) with lower-case columns, at least ``path`` and ``label``; UserError if not.

    The row limit is checked before the rows are decoded (parquet: its footer; CSV: ``nrows``), and only
    ``path``, ``label`` and ``split`` are read.
    """
    try:
        frame = _parquet_table(table) if table.suffix.lower() == ".parquet" else _csv_table(table)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot read {table.name} as a table ({type(exc).__name__}: {str(exc)[:120]})") from None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if not {"path", "label"} <= set(frame.columns):
        raise UserError(f"{table.name} needs columns 'path' and 'label' (and optionally 'split'); "
                        f"it has {', '.join(frame.columns[:8]) or 'none'}")
    if len(frame) > MAX_TABLE_ROWS:
        raise UserError(f"{table.name} has over {MAX_TABLE_ROWS:,} rows, the limit")
    return frame
