"""Bad input to every command: each case asserts the exit code (2 usage, 1 runtime), that no
traceback reaches the user, and that the message names the input that was wrong.

The commands run in-process through click's CliRunner (the real command, its real option
parsing and error mapping); only the Ctrl-C cases use a subprocess, since a signal needs one.
Nothing here trains or searches for long: every refusal comes before the work, which is the
point (a case that started the work would time out the suite rather than pass).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
PREDICTORS = sorted((ROOT / "data" / "predictors").glob("local-cpu__*.lgb"))
TABLES = sorted((ROOT / "data" / "tables").glob("local-cpu__*.parquet"))


def run(main, args: list[str]):
    res = CliRunner().invoke(main, [str(a) for a in args])
    out = res.output
    assert "Traceback" not in out, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res.exit_code, out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "junk.lgb").write_text("not a predictor\n")
    (d / "junk.parquet").write_bytes(b"PAR1 not really")
    (d / "junk.onnx").write_bytes(b"\x08\x01garbage")
    (d / "junk.csv").write_text("a,b\n1,2\n")
    (d / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    (d / "a_file").write_text("x")
    (d / "adir").mkdir()
    (d / "existing.lgb").write_text("an earlier result")
    from search.spaces import get_space
    import numpy as np
    space = get_space("nb201", resolution=8, C=4, N=1)
    space.export_onnx(space.sample(np.random.default_rng(0)), str(d / "good.onnx"))
    return d


# ------------------------------------------------------------------------ predict-latency
@pytest.mark.skipif(not PREDICTORS, reason="no shipped local-cpu predictor under data/predictors/")
@pytest.mark.parametrize("case", ["no model", "missing predictor", "directory predictor", "corrupt predictor",
                                  "unknown target", "predictor of another target"])
def test_predict_latency_refuses(case, files):
    from scripts.predict_latency import main
    good = files / "good.onnx"
    args, code, names = {
        "no model": ([], 2, "ONNX model"),
        "missing predictor": ([good, "--predictor", files / "none.lgb"], 2, "--predictor"),
        "directory predictor": ([good, "--predictor", files / "adir"], 2, "is a directory"),
        "corrupt predictor": ([good, "--predictor", files / "junk.lgb"], 1, "junk.lgb"),
        "unknown target": ([good, "--target", "nope"], 2, "unknown target 'nope'"),
        "predictor of another target": ([good, "--predictor", PREDICTORS[0], "--target", "raspberry-pi-4"], 1,
                                        "raspberry-pi-4"),
    }[case]
    rc, out = run(main, args)
    assert rc == code and names in out, out


@pytest.mark.skipif(not PREDICTORS, reason="no shipped local-cpu predictor under data/predictors/")
def test_predict_latency_batch_goes_on_past_a_bad_model(files):
    """One corrupt, one missing and one directory among the models: the good one is still
    predicted (stable JSON schema), each bad one is named, and the exit code says a model failed."""
    from scripts.predict_latency import main
    res = CliRunner().invoke(main, [str(files / "junk.onnx"), str(files / "good.onnx"), str(files / "gone.onnx"),
                                    str(files / "adir"), "--predictor", str(PREDICTORS[0]), "--json"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "junk.onnx" in res.stderr and "gone.onnx" in res.stderr and "adir" in res.stderr
    rows = json.loads(res.stdout)
    assert [r["error"] is None for r in rows] == [False, True, False, False]
    keys = set(rows[1])
    assert all(set(r) == keys for r in rows)  # the same keys for a failed model
    assert isinstance(rows[1]["n_kernels"], int) and rows[1]["n_kernels"] > 0
    assert rows[1]["kernels"] == [] and isinstance(rows[1]["folded_ops"], int)
    res = CliRunner().invoke(main, [str(files / "good.onnx"), "--predictor", str(PREDICTORS[0]), "--json",
                                    "--per-kernel"])
    row = json.loads(res.stdout)[0]
    assert set(row) == keys and len(row["kernels"]) == row["n_kernels"]  # same types under --per-kernel


# ------------------------------------------------------------------------ train-predictor
@pytest.mark.parametrize("case", ["no table", "missing table", "directory table", "corrupt table",
                                  "out is a directory", "out exists", "out under a file", "holdout out of range",
                                  "adapt without networks", "missing base", "corrupt networks file"])
def test_train_predictor_refuses(case, files, tmp_path):
    from scripts.train_predictor import main
    table = TABLES[0] if TABLES else files / "junk.parquet"
    base = PREDICTORS[0] if PREDICTORS else files / "junk.lgb"
    out = tmp_path / "p.lgb"
    args, code, names = {
        "no table": (["--out", out], 2, "--table"),
        "missing table": (["--table", files / "none.parquet", "--out", out], 2, "none.parquet"),
        "directory table": (["--table", files / "adir", "--out", out], 2, "is a directory"),
        "corrupt table": (["--table", files / "junk.parquet", "--out", out], 1, "junk.parquet"),
        "out is a directory": (["--table", table, "--out", files / "adir"], 2, "--out"),
        "out exists": (["--table", table, "--out", files / "existing.lgb"], 2, "--overwrite"),
        "out under a file": (["--table", table, "--out", files / "a_file" / "p.lgb"], 2, "a_file"),
        "holdout out of range": (["--table", table, "--out", out, "--holdout", "1.5"], 2, "--holdout"),
        "adapt without networks": (["--adapt-from", base, "--out", out], 2, "--networks"),
        "missing base": (["--adapt-from", files / "none.lgb", "--networks", files / "junk.csv", "--out", out], 2,
                         "none.lgb"),
        "corrupt networks file": (["--adapt-from", base, "--networks", files / "junk.csv", "--out", out], 1,
                                  "junk.csv"),
    }[case]
    if case == "corrupt networks file" and not PREDICTORS:
        pytest.skip("no shipped predictor to adapt")
    rc, out_text = run(main, args)
    assert rc == code and names in out_text, out_text
    assert not out.exists()


# ------------------------------------------------------------------------- profile-device
@pytest.mark.parametrize("case", ["unknown target", "bad host syntax", "host port out of range", "unknown family",
                                  "missing model", "out under a file", "models out exists", "negative budget",
                                  "missing targets file", "unreachable host"])
def test_profile_device_refuses(case, files, tmp_path):
    from scripts.profile_device import main
    args, code, names = {
        "unknown target": (["--target", "nope"], 2, "unknown target 'nope'"),
        "bad host syntax": (["--host", "me@dev;rm -rf ~"], 2, "--host"),
        "host port out of range": (["--host", "me@dev:99999"], 2, "99999"),
        "unknown family": (["--families", "nope"], 2, "unknown network family 'nope'"),
        "missing model": (["--models", files / "gone.onnx"], 2, "gone.onnx"),
        "out under a file": (["--out", files / "a_file" / "t.parquet"], 2, "a_file"),
        "models out exists": (["--models", files / "good.onnx", "--out", files / "existing.lgb"], 2, "--overwrite"),
        "negative budget": (["--budget-minutes", "-1"], 2, "--budget-minutes"),
        "missing targets file": (["--targets-file", files / "none.toml"], 2, "none.toml"),
        "unreachable host": (["--host", "nobody@127.0.0.1:1", "--out", tmp_path / "t.parquet", "--quiet"], 1,
                             "nobody@127.0.0.1:1"),
    }[case]
    rc, out = run(main, args)
    assert rc == code and names in out, out


# --------------------------------------------------------------------------------- search
SEARCH_CASES = {
    # case: (arguments, exit code, what the message names)
    "accuracy out of range": (["--min-accuracy", "150"], 2, "--min-accuracy"),
    "budget not positive": (["--latency-budget", "-1"], 2, "--latency-budget"),
    "budget and threshold": (["--latency-budget", "1", "--min-accuracy", "50"], 2, "--min-accuracy"),
    "bad host syntax": (["--host", "me@dev;reboot"], 2, "--host"),
    "unknown target": (["--target", "nope"], 2, "unknown target 'nope'"),
    "unknown space": (["--space", "nope"], 2, "unknown space 'nope'"),
    "unknown algorithm": (["--algorithm", "nope"], 2, "unknown algorithm 'nope'"),
    "unknown proxy": (["--proxies", "params,nope"], 2, "--proxies"),
    "unknown estimator": (["--accuracy", "nope"], 2, "--accuracy"),
    "population too small": (["--population", "1"], 2, "--population"),
    "minutes not positive": (["--budget-minutes", "0"], 2, "--budget-minutes"),
    "negative supernet weight": (["--supernet-weight", "-1"], 2, "--supernet-weight"),
    "directory as predictor": (["--predictor", "{dir}"], 2, "is a directory"),
    "missing predictor": (["--predictor", "{dir}/none.lgb"], 2, "none.lgb"),
    "corrupt predictor": (["--predictor", "{dir}/junk.lgb"], 1, "junk.lgb"),
    "missing data": (["--data", "{dir}/none"], 2, "--data"),
    "corrupt data": (["--data", "{dir}/junk.npz"], 1, "junk.npz"),
    "empty data folder": (["--data", "{dir}/adir"], 1, "empty"),
    "out is a file": (["--out", "{dir}/a_file"], 2, "--out"),
    "out under a file": (["--out", "{dir}/a_file/run"], 2, "a_file"),
    "out holds earlier results": (["--out", "{earlier}"], 2, "--overwrite"),
    "bad benchmark syntax": (["--benchmark", "nocolon"], 2, "--benchmark"),
    "missing benchmark file": (["--benchmark", "{dir}/none.csv:edgegpu"], 2, "none.csv"),
    "unreachable host": (["--host", "nobody@127.0.0.1:1"], 1, "nobody@127.0.0.1:1"),
}


@pytest.mark.skipif(not PREDICTORS, reason="no shipped local-cpu predictor under data/predictors/")
@pytest.mark.parametrize("case", list(SEARCH_CASES))
def test_search_refuses_before_any_work(case, files, tmp_path):
    """Every case is refused before the supernet trains or the search starts (the accuracy
    estimator would take minutes: a case that reached it would not finish in this suite's time)."""
    from scripts.search_cli import main
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "report.md").write_text("an earlier run")
    args, code, names = SEARCH_CASES[case]
    args = [a.format(dir=files, earlier=earlier) for a in args]
    base = ["--predictor", str(PREDICTORS[0]), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c"),
            "--quiet"]
    t0 = time.monotonic()
    rc, out = run(main, base + args)
    assert rc == code and names.format(dir=files) in out, out
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "run" / "frontier.json").exists()


def _interrupt(cmd: list[str], when: str, tmp_path, timeout: float = 180) -> tuple[int, str]:
    """Run `cmd` (a module of scripts) in a subprocess, send SIGINT once `when` appears on its
    stderr, and return (exit code, everything it printed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", *cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen, t0 = [], time.monotonic()
    try:
        for line in p.stdout:
            seen.append(line)
            if when in line:
                time.sleep(1.0)
                p.send_signal(signal.SIGINT)
                break
            assert time.monotonic() - t0 < timeout, "".join(seen)
        rest, _ = p.communicate(timeout=120)
    except BaseException:
        p.kill()
        raise
    return p.returncode, "".join(seen) + rest


@pytest.mark.skipif(not PREDICTORS, reason="no shipped local-cpu predictor under data/predictors/")
def test_ctrl_c_during_supernet_training_writes_the_outputs(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    rc, text = _interrupt(["scripts.search_cli", "--predictor", str(PREDICTORS[0]), "--accuracy", "supernet",
                           "--supernet-epochs", "50", "--out", str(out), "--cache-dir", str(cache)],
                          "step 20/", tmp_path)
    assert rc == 130 and "Traceback" not in text, text
    report = (out / "report.md").read_text()
    assert "interrupted" in report and "supernet" in report
    assert json.loads((out / "best.json").read_text())["interrupted"] is True
    assert list(cache.glob("supernet-*.pt")), "the steps trained are kept for a later run"


@pytest.mark.skipif(not TABLES, reason="no shipped local-cpu table under data/tables/")
def test_ctrl_c_during_predictor_training_writes_nothing_half_done(tmp_path):
    out = tmp_path / "p.lgb"
    rc, text = _interrupt(["scripts.train_predictor", "--table", str(TABLES[0]), "--out", str(out)], "kernel",
                          tmp_path)
    assert rc == 130 and "Traceback" not in text and "interrupted" in text, text
    assert not out.exists()


def test_a_ctrl_c_in_code_run_from_source_text_still_exits_130(tmp_path):
    """CPython 3.11 under `python -m` notes a KeyboardInterrupt that escaped code run from source
    text (`exec` of a string, as dataclasses and namedtuple do; some extension modules' init) and
    exits by SIGINT (-2) even after the command handled it and asked for 130. Once in CI: Ctrl-C
    during `import lightgbm` in train-predictor printed "interrupted", then ended as -2."""
    (tmp_path / "interrupted_in_exec.py").write_text(
        "from scripts.cli import cli_errors\n"
        "with cli_errors():\n"
        "    exec('raise KeyboardInterrupt')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "interrupted_in_exec"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 130 and "error: interrupted" in p.stderr and "Traceback" not in p.stderr, \
        (p.returncode, p.stderr)


def test_an_error_that_a_ctrl_c_caused_is_reported_as_the_interrupt():
    """Ctrl-C inside an extension module's import escapes as that import's error, not as
    KeyboardInterrupt (scipy's HiGHS wrapper, once in CI: an ImportError, a traceback, exit 1):
    the command still says "interrupted" and exits 130. Without a Ctrl-C the same error is a bug
    and keeps its traceback; the SIGINT handler is Python's again afterwards."""
    import click
    from click.testing import CliRunner

    from scripts.cli import EXIT_INTERRUPTED, cli_errors

    @click.command()
    @click.option("--interrupt/--no-interrupt")
    def cmd(interrupt):
        with cli_errors():
            try:
                if interrupt:
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(5)  # the handler runs here
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise ImportError('generic_type: type "ObjSense" is already registered!') from None

    r = CliRunner().invoke(cmd, ["--interrupt"])
    assert r.exit_code == EXIT_INTERRUPTED and "interrupted" in r.output, r.output
    r = CliRunner().invoke(cmd, ["--no-interrupt"])
    assert isinstance(r.exception, ImportError) and r.exit_code == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
