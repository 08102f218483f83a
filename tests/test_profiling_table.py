"""The table: journal + atomic compaction, resume, fingerprint refusal, write errors."""
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from profiling.errors import ProfilingError
from profiling.kernels import PARAM_COLUMNS, KernelSpec
from profiling.table import COLUMNS, TableWriter, journal_path, read_table

FP = {"cpu_model": "Test CPU", "cpu_flags": "avx2 fma", "cores": 4, "machine": "x86_64", "gpu": None,
      "gpu_driver": None, "os": "Linux", "runtime": "onnxruntime", "runtime_version": "1.0",
      "provider": "CPUExecutionProvider", "precision": "fp32", "threads": 1, "batch": 1}
TARGET = {"name": "local-cpu"}


def _row(i, median=1.0):
    spec = KernelSpec.make("conv", cin=8 * (i + 1), cout=8, h=7, w=7, kernel=1, stride=1)
    return {"config_id": spec.key(), "category": "kernel", "kind": "conv", **spec.params, "input_shapes": "[[1,8,7,7]]",
            "output_shapes": "[[1,8,7,7]]", "flops": 1e6, "params": 64, "bytes": 1e4, "median_ms": median,
            "p10_ms": median * 0.9, "p90_ms": median * 1.1, "mean_ms": median, "runs": 10, "ci_rel": 0.01,
            "remeasured": False, "host": "local", "measured_at": "2026-01-01T00:00:00Z"}


def test_columns_follow_the_design():
    for c in ("config_id", "category", "kind", "family", "network_spec", "input_shapes", "output_shapes", "flops",
              "params", "bytes", "median_ms", "p10_ms", "p90_ms", "mean_ms", "runs", "ci_rel", "remeasured",
              "host", "measured_at"):
        assert c in COLUMNS
    assert set(PARAM_COLUMNS) <= set(COLUMNS)


def test_write_compact_read(tmp_path):
    path = tmp_path / "t.parquet"
    w = TableWriter(path, FP, TARGET, compact_rows=3)
    assert path.exists() and len(read_table(path)[0]) == 0  # a valid (empty) table from the start
    for i in range(5):
        w.add(_row(i))
    on_disk = pq.read_table(path)
    assert on_disk.num_rows == 3  # compacted after 3 rows; the other 2 are in the journal
    df, meta = read_table(path)
    assert len(df) == 5  # read_table replays the journal
    assert meta["fingerprint"] == FP and meta["target"] == TARGET and meta["hwnas_version"] and meta["created"]
    w.close()
    assert not journal_path(path).exists() and pq.read_table(path).num_rows == 5
    df, _ = read_table(path)
    assert df.loc[0, "cin"] == 8 and df.loc[0, "act"] == "relu" and bool(df.loc[0, "bn"]) is True
    assert KernelSpec.from_dict({"kind": df.loc[0, "kind"], **df.loc[0].to_dict()}).key() == df.loc[0, "config_id"]


def test_torn_journal_and_resume(tmp_path):
    path = tmp_path / "t.parquet"
    w = TableWriter(path, FP, TARGET, compact_rows=100)
    for i in range(4):
        w.add(_row(i))
    w._jfh.write('{"config_id": "half-writ')  # a kill -9 in the middle of a write
    w._jfh.flush()
    # no close(): the process "died"
    df, _ = read_table(path)
    assert len(df) == 4
    stale = tmp_path / ".t.parquet.abc123.tmp"  # a compaction cut short by the kill
    stale.write_bytes(b"PAR1 partial")
    w2 = TableWriter(path, FP, TARGET)  # resume is the default
    assert not stale.exists()
    assert w2.resumed == 4 and all(_row(i)["config_id"] in w2 for i in range(4))
    w2.add(_row(4))
    w2.add(_row(0, median=2.0))  # a re-measurement replaces the row
    w2.close()
    df, _ = read_table(path)
    assert len(df) == 5 and df.set_index("config_id").loc[_row(0)["config_id"], "median_ms"] == 2.0
    w3 = TableWriter(path, FP, TARGET, resume=False)
    assert len(w3) == 0
    w3.close()
    assert len(read_table(path)[0]) == 0


def test_different_fingerprint_refuses_and_leaves_file_intact(tmp_path):
    path = tmp_path / "t.parquet"
    w = TableWriter(path, FP, TARGET)
    w.add(_row(0))
    w.close()
    before = path.read_bytes()
    other = dict(FP, cpu_model="Other CPU", threads=4)
    with pytest.raises(ProfilingError) as e:
        TableWriter(path, other, TARGET)
    assert "cpu_model" in str(e.value) and "threads" in str(e.value) and "Other CPU" in str(e.value)
    assert path.read_bytes() == before
    with pytest.raises(ProfilingError):
        TableWriter(path, other, TARGET, resume=False)
    assert path.read_bytes() == before


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ProfilingError, match="cannot write the table"):
        TableWriter(blocker / "t.parquet", FP, TARGET)
    not_table = tmp_path / "x.parquet"
    not_table.write_text("garbage")
    with pytest.raises(ProfilingError, match="not a readable hwnas table"):
        TableWriter(not_table, FP, TARGET)


FULL_DISK = r"""
import resource, signal, sys, json
sys.path.insert(0, {root!r})
from tests.test_profiling_table import FP, TARGET, _row
from profiling.table import TableWriter
from profiling.errors import ProfilingError
w = TableWriter({path!r}, FP, TARGET, compact_rows=10**6)
for i in range(3):
    w.add(_row(i))
w.compact()
size = {path!r}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))
try:
    for i in range(3, 400):
        w.add(_row(i))
    w.compact()
except ProfilingError as e:
    print("ERROR", e)
"""


def test_full_disk_gives_a_clear_error_and_keeps_the_table(tmp_path, repo_root):
    path = tmp_path / "t.parquet"
    out = subprocess.run([sys.executable, "-c", FULL_DISK.format(root=str(repo_root), path=str(path))],
                         capture_output=True, text=True, timeout=60)
    assert "ERROR cannot write" in out.stdout, out.stdout + out.stderr
    assert "Traceback" not in out.stdout
    df, meta = read_table(path)  # still a valid table with at least the first rows
    assert len(df) >= 3 and meta["fingerprint"] == FP
