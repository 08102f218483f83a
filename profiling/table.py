"""The latency table: Parquet, one row per configuration, written so that nothing is lost.

Writing is two-level:

* a journal `<table>.journal` (JSON lines) gets every row as soon as it is measured,
  flushed and fsynced, so `kill -9` loses at most the configuration in flight;
* every few hundred rows or seconds, and at the end, the journal is *compacted* into the
  Parquet file: the whole table is written to a temporary file beside it, fsynced, and
  moved over the old one with `os.replace` (atomic), then the journal is emptied.

The Parquet file on disk is therefore always a complete, valid table; the rows measured
since its last compaction are in the journal, which `read_table` and a resumed run
replay. The Parquet key-value metadata `hwnas` holds the fingerprint, target, hwnas
version and dates (docs/design.md §2).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ProfilingError
from .fingerprint import describe_diff, diff_fingerprints, fingerprint_hash
from .kernels import KINDS, PARAM_COLUMNS

METADATA_KEY = b"hwnas"
TABLE_FORMAT = 1
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would give; mkstemp's 0600 is too strict for a shared table


def hwnas_version() -> str:
    try:
        from importlib.metadata import version
        return version("hwnas")
    except Exception:
        return "0.1.0"


def _param_type(name: str) -> pa.DataType:
    for schema in KINDS.values():
        if name in schema.params:
            t = schema.params[name]
            return {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}[t]
    return pa.string()


SCHEMA = pa.schema(
    [("config_id", pa.string()), ("category", pa.string()), ("kind", pa.string())]
    + [(p, _param_type(p)) for p in PARAM_COLUMNS]
    + [("family", pa.string()), ("network_spec", pa.string()),
       ("input_shapes", pa.string()), ("output_shapes", pa.string()),
       ("flops", pa.float64()), ("params", pa.int64()), ("bytes", pa.float64()),
       ("median_ms", pa.float64()), ("p10_ms", pa.float64()), ("p90_ms", pa.float64()),
       ("mean_ms", pa.float64()), ("runs", pa.int64()), ("ci_rel", pa.float64()),
       ("remeasured", pa.bool_()), ("host", pa.string()), ("measured_at", pa.string())]
)
COLUMNS = tuple(SCHEMA.names)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _clean(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _to_arrow(rows: list[dict[str, Any]], metadata: dict[str, Any]) -> pa.Table:
    cols = {name: [_clean(r.get(name)) for r in rows] for name in COLUMNS}
    table = pa.Table.from_pydict(cols, schema=SCHEMA)
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def journal_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".journal")


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as e:
        raise ProfilingError(f"{path} is not a readable hwnas table: {e}") from None
    if METADATA_KEY not in meta:
        raise ProfilingError(f"{path} is a Parquet file but not an hwnas table (no 'hwnas' metadata)")
    return json.loads(meta[METADATA_KEY])


def _read_journal(path: Path, fp_hash: str | None) -> list[dict[str, Any]]:
    """Rows of a journal; a torn last line (the row in flight at a kill) is ignored."""
    rows: list[dict[str, Any]] = []
    try:
        with open(path, "r", encoding="utf-8") as fh:
            lines = fh.read().split("\n")
    except FileNotFoundError:
        return rows
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # torn write
        if i == 0 and "journal" in obj:
            if fp_hash is not None and obj.get("fingerprint_hash") != fp_hash:
                return []  # a journal from another device: not ours to replay
            continue
        if isinstance(obj, dict) and "config_id" in obj:
            rows.append(obj)
    return rows


def read_table(path: str | os.PathLike, include_journal: bool = True) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The table as a DataFrame, and its metadata (fingerprint, target, version, dates).

    Rows still in the journal of an interrupted or running profile are included (the
    latest measurement of a configuration wins).
    """
    path = Path(path)
    if not path.exists():
        raise ProfilingError(f"table {path} does not exist")
    meta = read_metadata(path)
    try:
        df = pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowInvalid) as e:
        raise ProfilingError(f"{path} is not a readable hwnas table: {e}") from None
    if include_journal:
        extra = _read_journal(journal_path(path), fingerprint_hash(meta.get("fingerprint", {})))
        if extra:
            jdf = _to_arrow(extra, meta).to_pandas()
            df = pd.concat([df, jdf], ignore_index=True) if len(df) else jdf
            df = df.drop_duplicates("config_id", keep="last").reset_index(drop=True)
    return df, meta


class TableWriter:
    """Append rows to a table with a journal and periodic atomic compaction.

    `resume=True` (the default) continues an existing table with the same fingerprint;
    a different fingerprint raises ProfilingError naming the fields that differ and
    leaves the file untouched. `resume=False` starts over: the old table is replaced
    (atomically) at the first compaction.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, Any], target: dict[str, Any],
                 resume: bool = True, compact_rows: int = 250, compact_seconds: float = 60.0):
        self.path = Path(path)
        self.journal = journal_path(self.path)
        self.fp_hash = fingerprint_hash(fingerprint)
        self.compact_rows = compact_rows
        self.compact_seconds = compact_seconds
        self.rows: dict[str, dict[str, Any]] = {}
        self.resumed = 0
        now = utc_now()
        self.metadata = {"format": TABLE_FORMAT, "fingerprint": fingerprint, "fingerprint_hash": self.fp_hash,
                         "target": target, "hwnas_version": hwnas_version(), "created": now, "updated": now}
        self._check_writable()
        self._remove_stale_temporaries()
        if self.path.exists():
            old = read_metadata(self.path)
            diff = diff_fingerprints(old.get("fingerprint", {}), fingerprint)
            if diff:
                raise ProfilingError(
                    f"{self.path} was measured on a different device or setting, so this run will not "
                    f"append to it: {describe_diff(diff)}. The file is left as it is; "
                    f"choose another `out` (or none, for a name derived from the fingerprint)")
            if resume:
                df, _ = read_table(self.path, include_journal=True)
                for rec in df.to_dict("records"):
                    self.rows[rec["config_id"]] = {k: _clean(v) for k, v in rec.items()}
                self.resumed = len(self.rows)
                self.metadata["created"] = old.get("created", now)
        self._since_compact = 0
        self._last_compact = time.monotonic()
        self.compact()  # a valid table on disk from the start; it also empties the journal
        self._jfh = self._open_journal()

    # ---- checks ------------------------------------------------------------------------
    def _check_writable(self) -> None:
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".hwnas-probe-", dir=parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise ProfilingError(f"cannot write the table to {self.path}: {e.strerror or e} "
                                 f"(choose a writable `out`)") from None
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise ProfilingError(f"cannot write the table {self.path}: the file is read-only")

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of a compaction that a kill interrupted (never the table itself)."""
        for pattern in (f".{self.path.name}.*.tmp", f".{self.journal.name}.*"):
            for stale in self.path.parent.glob(pattern):
                try:
                    stale.unlink()
                except OSError:
                    pass

    def _open_journal(self):
        try:
            fh = open(self.journal, "a", encoding="utf-8")
            if fh.tell() == 0:
                fh.write(json.dumps({"journal": 1, "fingerprint_hash": self.fp_hash}) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            return fh
        except OSError as e:
            raise ProfilingError(f"cannot write the journal {self.journal}: {e.strerror or e}") from None

    # ---- writing -----------------------------------------------------------------------
    def __contains__(self, config_id: str) -> bool:
        return config_id in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: dict[str, Any]) -> None:
        """Make `row` durable (journal + fsync); compact now and then."""
        line = json.dumps({k: _clean(row.get(k)) for k in COLUMNS}, allow_nan=False)
        try:
            self._jfh.write(line + "\n")
            self._jfh.flush()
            os.fsync(self._jfh.fileno())
        except OSError as e:
            raise ProfilingError(
                f"cannot write to {self.journal}: {e.strerror or e}. The table {self.path} keeps its "
                f"{len(self.rows)} rows; free space and run again to resume") from None
        self.rows[row["config_id"]] = row
        self._since_compact += 1
        if (self._since_compact >= self.compact_rows
                or time.monotonic() - self._last_compact >= self.compact_seconds):
            self.compact()

    def compact(self) -> None:
        """Write all rows to the Parquet file atomically, then empty the journal."""
        self.metadata["updated"] = utc_now()
        table = _to_arrow(list(self.rows.values()), self.metadata)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        try:
            pq.write_table(table, tmp, compression="zstd")
            os.chmod(tmp, FILE_MODE)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise ProfilingError(
                f"cannot write the table {self.path}: {e.strerror or e}. The file on disk is the last "
                f"complete version and the newer rows are in {self.journal.name}; free space and run "
                f"again to resume") from None
        # The rows are in the Parquet file now: start an empty journal (atomically too).
        jh = getattr(self, "_jfh", None)
        try:
            fd, jtmp = tempfile.mkstemp(prefix=f".{self.journal.name}.", dir=self.path.parent)
            os.chmod(jtmp, FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps({"journal": 1, "fingerprint_hash": self.fp_hash}) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(jtmp, self.journal)
            if jh is not None:
                jh.close()
                self._jfh = open(self.journal, "a", encoding="utf-8")
        except OSError:
            pass  # a stale journal only repeats rows that the table already has
        self._since_compact = 0
        self._last_compact = time.monotonic()

    def close(self) -> None:
        self.compact()
        try:
            self._jfh.close()
            self.journal.unlink()
        except OSError:
            pass


__all__ = ["read_table", "read_metadata", "TableWriter", "COLUMNS", "SCHEMA", "journal_path", "utc_now"]
