"""A new machine in minutes: measure a few random networks on it and adapt the closest predictor.

When no shipped predictor was measured on this machine (another CPU model, other CPU flags such
as AVX-512 or VNNI, another runtime), a whole `profile-device` run takes hours. Calibration
instead measures 20-30 random networks from the profiler's own network generator
(`profiling.networks.sample_network`, every family), interleaved in round-robin passes
(`profiling.measure.measure_models(rounds=...)`, so a slow spell of the machine moves one pass
of every network a little, not a few networks a lot), and fits the few-shot adapter
(`predictors.adapt`) on top of the closest predictor. The result is a predictor file whose
fingerprint is this machine's, so the catalog picks it next time:

    from predictors.calibrate import calibrate
    result = calibrate("data/predictors", target="local-cpu", out_dir="~/.cache/hwnas/predictors")
    result.path, result.predictor, result.base

The command line's `train-predictor` calibrates on request; `search` and `make demo` call it by themselves
when no predictor matches the machine.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from profiling.fingerprint import (device_label, diff_fingerprints, fingerprint_hash, local_fingerprint,
                                   make_fingerprint, slug)
from .catalog import SAME_DEVICE, find_predictor, match_predictor, rank_predictors
from .fileformat import PredictorFileError, read_predictor_header
from profiling.errors import ProfilingError
from profiling.paths import SHIPPED_PREDICTORS, SHIPPED_TABLES, cache_root
from profiling.targets import TargetError, get_target
from .model import Predictor, PredictorError

if TYPE_CHECKING:
    from profiling.measure import ModelMeasurement
    from profiling.targets import Target

    from .catalog import PredictorMatch

#: networks measured by default: enough for the adapter's leave-one-out choice, a few minutes
DEFAULT_NETWORKS = 24
#: round-robin passes over the networks, and the timed window of one network in one pass
DEFAULT_ROUNDS = 4
DEFAULT_SECONDS_PER_PASS = 0.25
#: the networks' size: large enough to be measured like real models, small enough to be fast
CALIBRATION_MAX_FLOPS = 1.5e9
#: the calibration sets: random networks of the profiler's generator, or published architectures
NETWORK_SETS = ("generated", "real")
# Published architectures by default: on the real-model corpus the calibrated Intel predictor was 39-44%
# within ±10% with them and 9-12% with generated networks (docs/benchmarks.md, Session 9, h13).
DEFAULT_NETWORK_SET = "real"
#: the published architectures' cap (ResNet-50 and DeiT-S at 160-192 pixels)
REAL_MAX_FLOPS = 6e9


@dataclass
class CalibrationResult:
    """The adapted predictor, where it was written, what it was adapted from and the networks it
    was fitted on (names, measured ms, the base predictor's ms)."""
    predictor: Any
    path: Path | None
    base: Path
    base_description: str
    names: list[str] = field(default_factory=list)
    measured_ms: list[float] = field(default_factory=list)
    base_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        a = self.predictor.adapters[-1]
        loo = a.get("loo", {})
        ratio = np.median(np.asarray(self.measured_ms) / np.maximum(self.base_ms, 1e-9)) if self.base_ms else 1.0
        return (f"calibrated {self.base.name} on {len(self.measured_ms)} networks measured here in "
                f"{self.seconds:.0f}s (this machine runs them {ratio:.2f}x the base predictor's estimate); "
                f"leave-one-out {loo.get('within10', float('nan')):.0%} within ±10%, "
                f"MAPE {loo.get('mape', float('nan')):.1%}")


def closest_predictor(candidates: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], target: str,
                      fingerprint: dict[str, Any]) -> PredictorMatch | None:
    """The predictor for `target` whose fingerprint is closest to `fingerprint`: the catalog's
    match level first, then the fewest differing identity fields, then the same CPU vendor.
    `candidates` is a folder (searched recursively) or a list of files. None when no predictor
    for `target` is among them."""

    paths = sorted(Path(candidates).glob("**/*.lgb")) if isinstance(candidates, (str, os.PathLike)) \
        else [Path(p) for p in candidates]
    ranked = rank_predictors(paths, target, fingerprint)
    if not ranked:
        return None
    vendor = str(fingerprint.get("cpu_model", "")).split(" ")[0].lower()

    def key(m: PredictorMatch) -> tuple[int, int, bool, str]:
        fp = read_predictor_header(m.path).get("fingerprint") or {}
        same_vendor = str(fp.get("cpu_model", "")).split(" ")[0].lower() == vendor
        return (-m.level, len(diff_fingerprints(fp, fingerprint)), not same_vendor, m.path.name)
    return min(ranked, key=key)


def calibration_networks(n: int = DEFAULT_NETWORKS, seed: int = 0,
                         max_flops: float = CALIBRATION_MAX_FLOPS, network_set: str = DEFAULT_NETWORK_SET) -> list[dict[str, Any]]:
    """`n` network specs to calibrate on. network_set="generated": random networks from the profiler's
    generator, the families taken in turn (a family that has no network under `max_flops` gives its
    turn to a random family); "real": published architectures (`profiling.networks.REAL_ARCHITECTURES`,
    taken in turn at 224, then 192, 160 and 128 pixels, all distinct, under `REAL_MAX_FLOPS`), which carry to
    real models where the generated ones did not (docs/predictor.md, "Calibration")."""
    # lazy: loads onnx (slow to import) only when this runs
    from profiling.networks import (FAMILIES, REAL_ARCHITECTURES, REAL_RESOLUTIONS, network_id, real_network,
                                    sample_network)
    if network_set not in NETWORK_SETS:
        raise PredictorError(f"unknown calibration network set {network_set!r}; choose one of {', '.join(NETWORK_SETS)}")
    rng = np.random.default_rng(seed)
    out = []
    if network_set == "real":  # each architecture in turn, at 224, 192, 160, 128 px on the 1st..4th turn
        names, seen = list(REAL_ARCHITECTURES), set()
        cap = max(max_flops, REAL_MAX_FLOPS)
        res = sorted(REAL_RESOLUTIONS, reverse=True)
        for i in range(n):
            spec = real_network(rng, names[i % len(names)], cap, res[(i // len(names)) % len(res)])
            for _ in range(20):  # the same network twice measures nothing new (and shares a name)
                if network_id(spec) not in seen:
                    break
                spec = real_network(rng, None, cap)
            seen.add(network_id(spec))
            out.append(spec)
        return out
    for i in range(n):
        try:
            out.append(sample_network(rng, FAMILIES[i % len(FAMILIES)], max_flops=max_flops))
        except RuntimeError:
            out.append(sample_network(rng, None, max_flops=max_flops))
    return out


def calibration_file_name(target_name: str, fingerprint: dict[str, Any]) -> str:
    """`<target>__<device>__<hash>.lgb`, the shipped predictors' naming, with this machine's fingerprint."""
    return f"{target_name}__{slug(device_label(fingerprint))}__{fingerprint_hash(fingerprint)}.lgb"


def _minutes(networks: int = DEFAULT_NETWORKS, rounds: int = DEFAULT_ROUNDS,
             seconds_per_pass: float = DEFAULT_SECONDS_PER_PASS, **_: Any) -> float:
    """A rough duration: the timed passes plus about 0.2 s per network and pass for the session."""
    return max(1.0, networks * rounds * (seconds_per_pass + 0.2) / 60)


def calibrate(base: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], target: str = "local-cpu",
              out_dir: str | os.PathLike[str] | None = None, out: str | os.PathLike[str] | None = None,
              networks: int = DEFAULT_NETWORKS, rounds: int = DEFAULT_ROUNDS,
              seconds_per_pass: float = DEFAULT_SECONDS_PER_PASS, seed: int = 0,
              max_flops: float = CALIBRATION_MAX_FLOPS, network_set: str = DEFAULT_NETWORK_SET, host: str | None = None,
              targets_file: str | os.PathLike[str] | None = None,
              progress: Callable[[str], None] | None = None) -> CalibrationResult:
    """Measure `networks` random networks on `target` (this machine, or `host` over SSH) and adapt
    the closest predictor to them.

    base: a predictor file, or a folder / list of predictor files to choose the closest from.
    out: the file to write; out_dir: a folder to write `<target>__<device>__<hash>.lgb` into
    (neither: nothing is written). The predictor written carries the measured machine's
    fingerprint and the target's settings, so `predictors.catalog` matches it to this machine."""
    # lazy: loads onnx and pyarrow (slow to import) only when this runs
    from profiling.measure import connect, measure_models
    from profiling.builders import materialize
    from profiling.networks import build_network, network_id, network_kernels

    say = progress or (lambda s: None)
    if networks < 5:
        raise PredictorError(f"calibration needs at least 5 networks (20-30 recommended), got {networks}")
    t_start = time.time()
    try:
        tgt = get_target(target, targets_file)
    except TargetError as e:
        raise PredictorError(str(e)) from None
    conn = connect(tgt, host)  # the machine's facts make the new predictor's fingerprint
    try:
        fingerprint = make_fingerprint(conn.facts or {}, tgt)
    finally:
        conn.close()
    if isinstance(base, (str, os.PathLike)) and Path(base).is_file():  # a single file
        base_path, base_desc = Path(base), f"{Path(base).name} (given)"
    else:
        m = closest_predictor(base, tgt.name, fingerprint)
        if m is None:
            raise PredictorError(f"no predictor for target {tgt.name!r} in {base}: calibration adapts an existing "
                                 "predictor; give one built for this target")
        base_path, base_desc = m.path, m.describe("this machine")
    pred = Predictor.load(base_path)
    specs = calibration_networks(networks, seed, max_flops, network_set)
    say(f"calibrating {base_path.name} for {tgt.name}: {networks} networks x {rounds} interleaved passes "
        f"of {seconds_per_pass:g}s (about {_minutes(networks, rounds, seconds_per_pass):.0f} min)")
    with tempfile.TemporaryDirectory(prefix="hwnas-calibrate-") as tmp:
        paths, names = [], [network_id(s) for s in specs]
        for i, (spec, name) in enumerate(zip(specs, names)):
            d = Path(tmp) / name  # the builders' weights file has one name: a folder per network
            d.mkdir()
            paths.append(materialize(build_network(spec, tgt.batch), str(d), seed=i))
        def tick(i: int, n: int, m: ModelMeasurement) -> None:
            say(f"  measured {i}/{n}: {names[i - 1]} {m.median_ms:.3f} ms")
        try:  # interleaved: `rounds` passes of `seconds_per_pass` per network (profiling.interleave)
            measured = measure_models(paths, tgt, host=host, targets_file=targets_file, passes=rounds,
                                      slice_s=seconds_per_pass, progress=tick)
        except ProfilingError as e:
            raise PredictorError(f"calibration could not measure its networks: {e}") from None
    ms = np.array([m.median_ms for m in measured])
    cands = [network_kernels(s) for s in specs]
    base_ms = pred.predict_specs(cands)[0]
    new = pred.adapt(cands, ms, device=tgt.name, target=tgt.to_dict())
    new.fingerprint = fingerprint
    new.training = dict(new.training, calibration={
        "base": base_path.name, "base_fingerprint": pred.fingerprint, "networks": int(networks),
        "rounds": int(rounds), "seconds_per_pass": float(seconds_per_pass), "seed": int(seed),
        "network_set": network_set,
        "measured_ms": ms.tolist(), "base_ms": np.asarray(base_ms).tolist(), "names": names})
    new.training["calibration"]["seconds"] = round(time.time() - t_start, 1)  # measuring and adapting
    path: Path | None = None
    if out is not None:
        path = Path(out)
    elif out_dir is not None:
        path = Path(out_dir).expanduser() / calibration_file_name(tgt.name, fingerprint)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        new.save(path)
    return CalibrationResult(new, path, base_path, base_desc, names, ms.tolist(),
                             np.asarray(base_ms).tolist(), time.time() - t_start)


def default_cache() -> Path:
    """Where predictors made on this machine are kept: $HWNAS_CACHE/predictors, else
    ~/.cache/hwnas/predictors (outside the repository; `profiling.paths.cache_root`)."""
    return cache_root() / "predictors"


def machine_fingerprint(target: Target) -> dict[str, Any]:
    """This machine's fingerprint for `target` (a `profiling.targets.Target`)."""
    return local_fingerprint(target)


def predictor_for_this_machine(shipped: str | os.PathLike[str] | None = None, cache: str | os.PathLike[str] | None = None,
                               target: str = "local-cpu", progress: Callable[[str], None] | None = None,
                               tables: str | os.PathLike[str] | None = None, fingerprint: dict[str, Any] | None = None,
                               **calibrate_kw: Any) -> tuple[Path, str]:
    """(predictor file, how it was chosen, in words) for `target` on this machine. What `search`,
    `make demo` and `predict-latency` (its automatic choice) use, so the three choose the same file:

    1. a predictor under `shipped` (default data/predictors/) measured on this machine (the same
       fingerprint; the catalog's content order breaks ties);
    2. else one trained from the largest table of `target` under `tables` (default data/tables/)
       measured on this machine (named with its fingerprint hash), once, cached in `cache`;
    3. else one calibrated on this machine before (in `cache`, named by this machine's fingerprint);
    4. else, when the target runs on this machine, a new calibration of the closest shipped
       predictor, written to `cache` (a few minutes, once); when it does not (a Pi, a Jetson),
       the closest shipped predictor, said to be another machine's.

    `cache` defaults to `default_cache()`; `fingerprint` to this machine's. Raises PredictorError
    (nothing to choose from) or ProfilingError (the calibration could not measure)."""

    shipped = Path(shipped) if shipped is not None else SHIPPED_PREDICTORS
    tables = Path(tables) if tables is not None else SHIPPED_TABLES
    cache_dir = Path(cache).expanduser() if cache is not None else default_cache()
    try:
        tgt = get_target(target)
    except TargetError as e:
        raise PredictorError(str(e)) from None
    fp = fingerprint if fingerprint is not None else machine_fingerprint(tgt)
    match = find_predictor(shipped, target, fp)
    if match is not None and match.level == SAME_DEVICE:
        return match.path, f"shipped predictor measured on this machine: {match.describe('this machine')}"
    trained = predictor_from_table(tables, cache_dir, target, fingerprint_hash(fp), progress)
    if trained is not None:
        return trained, f"trained from a shipped table measured on this machine: {trained}"
    cached = cache_dir / calibration_file_name(target, fp)
    if cached.exists():
        try:
            if match_predictor(cached, fp).level == SAME_DEVICE:
                return cached, f"calibrated on this machine before: {cached}"
        except PredictorFileError:  # an unreadable leftover: calibrate again
            pass
    if match is None:
        raise PredictorError(f"no {target} predictor under {shipped} to calibrate from: profile this machine "
                             f"as target {target!r} and train a predictor on its table")
    try:
        tgt.check_local_support()
    except (TargetError, ProfilingError):
        return match.path, (f"the closest shipped {target} predictor, {match.describe('the device')}: the target "
                            f"does not run on this machine, so it cannot be calibrated here")
    say = progress or (lambda s: None)
    say(f"no shipped {target} predictor was measured on this machine ({device_label(fp)}): calibrating the closest "
        f"one on networks measured here (once, about {_minutes(**calibrate_kw):.0f} min)")
    res = calibrate(shipped, target=target, out=cached, progress=progress, **calibrate_kw)
    say(res.summary())
    return cached, f"calibrated on this machine now from {res.base.name}: {cached}"


def predictor_from_table(tables: str | os.PathLike[str], cache: str | os.PathLike[str], target: str, fingerprint_hash: str,
                         progress: Callable[[str], None] | None = None) -> Path | None:
    """A predictor trained (once, cached in `cache`) from the largest table of `target` under
    `tables` measured on this machine (its name ends in the fingerprint hash; it may still be
    being measured, and is read as is), or None when there is none. Ties go by content (rows,
    then name), never by file times, which after `git clone` are the checkout order."""
    # lazy: loads pyarrow (slow to import) only when this runs
    import pyarrow as pa
    import pyarrow.parquet as pq

    # lazy: loads pyarrow (slow to import) only when this runs
    from profiling.table import read_table


    def rows(p: Path) -> int:
        try:
            return int(pq.ParquetFile(p).metadata.num_rows)
        except (OSError, pa.ArrowException):  # unreadable, or being written
            return -1
    found = sorted(Path(tables).glob(f"{target}__*__{fingerprint_hash}.parquet"), key=lambda p: (-rows(p), p.name))
    found = [p for p in found if rows(p) > 0]
    if not found:
        return None
    table = found[0]
    df, _ = read_table(table)
    out = Path(cache) / f"{table.stem}-{len(df)}rows.lgb"
    if not out.exists():
        (progress or (lambda s: None))(
            f"no shipped predictor for this machine; training one from {table} ({len(df)} rows) into {out} "
            "(once, about 2 minutes) ...")
        p = Predictor(num_threads=1)
        p.fit([table])
        out.parent.mkdir(parents=True, exist_ok=True)
        p.save(out)
    return out


__all__ = ["calibrate", "predictor_for_this_machine", "predictor_from_table", "default_cache", "machine_fingerprint",
           "SHIPPED_PREDICTORS", "SHIPPED_TABLES", "closest_predictor", "calibration_networks", "calibration_file_name", "CalibrationResult",
           "DEFAULT_NETWORKS", "DEFAULT_ROUNDS"]
