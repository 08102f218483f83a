# -*- coding: utf-8 -*-
"""hwnas device runner: measures ONNX models with onnxruntime, JSON lines over stdin/stdout.

ONE self-contained file. It runs on the device (Python >= 3.6, numpy and onnxruntime
only: a Jetson Nano on JetPack 4 has Python 3.6), both for remote devices over SSH and
for local profiling, where it is spawned as a subprocess of the same bootstrap, so every
local profile exercises it. Keep it Python 3.6 compatible: no f-string `=` specifiers,
no dataclasses, no walrus, no `from __future__ import annotations`, no onnx package.

Protocol: one JSON object per line in each direction.
  -> {"op": "hello"}
  <- {"ok": true, "facts": {...}}              (device facts for the fingerprint)
  <- {"ok": false, "error": "...", "missing": "onnxruntime"}
  -> {"op": "measure", "id": ..., "model": "<base64 ONNX>", "fills": [...],
      "inputs": [{"name": "x", "shape": [1, 3, 224, 224]}], "session": {...}, "stop": {...}}
  <- {"ok": true, "id": ..., "stats": {"median_ms": ..., ...}, "providers": [...]}
  -> {"op": "forget", "keys": [...]}           (drop sessions kept under these `cache_key`s)
  <- {"ok": true, "forgot": n, "kept": m}     (m: sessions the runner still keeps)
  -> {"op": "bye"}

A job with a `cache_key` keeps its session (and inputs) for the next job with the same key:
interleaved measurement (`profiling.measure.measure_interleaved`) times each model of a batch
for a short slice, pass after pass, and sends only the key after the first pass.
"""
import base64
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

WEIGHTS_FILE = "weights.bin"

DEFAULT_STOP = {
    "warmup_runs": 5,      # at least this many untimed runs ...
    "warmup_s": 0.05,      # ... and at least this long (caches, arenas, clocks settle)
    "min_runs": 30,        # never stop on the CI before this many timed runs ...
    "min_s": 0.05,         # ... or this many timed seconds (averages out short bursts of load)
    "round": 10,           # runs between two checks of the stopping rule
    "max_runs": 2000,      # cap on timed runs
    "max_s": 1.5,          # cap on timed seconds (at least `hard_min_runs` runs)
    "hard_min_runs": 3,
    "ci_target": 0.02,     # stop once the 95% CI of the median is within +-2%
}


# ---- statistics (pure Python, also imported by the host side and its tests) ------------
def percentile(sorted_values, q):
    """Linear-interpolated percentile of an already sorted list, q in [0, 100]."""
    n = len(sorted_values)
    if n == 0:
        return float("nan")
    pos = (n - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return sorted_values[lo] * (1 - frac) + sorted_values[hi] * frac


def median_ci(sorted_values, z=1.96):
    """Distribution-free 95% CI of the median from order statistics: (lo, hi)."""
    n = len(sorted_values)
    if n == 0:
        return float("nan"), float("nan")
    half = z * math.sqrt(n) / 2.0
    lo = int(math.floor(n / 2.0 - half))
    hi = int(math.ceil(n / 2.0 + half)) - 1
    lo = max(0, min(lo, n - 1))
    hi = max(0, min(hi, n - 1))
    return sorted_values[lo], sorted_values[hi]


def ci_rel(samples):
    """Largest distance from the median to an end of its 95% CI, relative to the median."""
    s = sorted(samples)
    med = percentile(s, 50)
    lo, hi = median_ci(s)
    if not med > 0:
        return float("inf")
    return max(med - lo, hi - med) / med


def should_stop(samples, elapsed_s, rule):
    """The stopping rule: (stop?, reason)."""
    n = len(samples)
    if n >= rule["max_runs"]:
        return True, "max_runs"
    if elapsed_s >= rule["max_s"] and n >= rule["hard_min_runs"]:
        return True, "max_s"
    if n >= rule["min_runs"] and elapsed_s >= rule.get("min_s", 0.0) and ci_rel(samples) <= rule["ci_target"]:
        return True, "ci"
    return False, ""


def summarize(samples):
    s = sorted(samples)
    return {
        "median_ms": percentile(s, 50),
        "p10_ms": percentile(s, 10),
        "p90_ms": percentile(s, 90),
        "mean_ms": sum(s) / len(s),
        "min_ms": s[0],
        "runs": len(s),
        "ci_rel": ci_rel(s),
    }


def measure_callable(run, rule, delay_ms=0.0):
    """Warm up, then time `run()` in rounds until the stopping rule says stop."""
    r = dict(DEFAULT_STOP)
    r.update(rule or {})
    clock = time.perf_counter

    def timed():
        t0 = clock()
        run()
        if delay_ms > 0:  # test hook: a busy wait that slows the device down
            end = clock() + delay_ms / 1000.0
            while clock() < end:
                pass
        return (clock() - t0) * 1000.0

    t_start = clock()
    warm = 0
    while warm < r["warmup_runs"] or (clock() - t_start < r["warmup_s"] and warm < 2000):
        timed()
        warm += 1
    samples = []
    t0 = clock()
    reason = ""
    while True:
        for _ in range(min(max(int(r["round"]), len(samples) // 5),  # checks get rarer as runs grow
                           max(1, int(r["max_runs"]) - len(samples)))):
            samples.append(timed())
            if clock() - t0 >= r["max_s"] and len(samples) >= r["hard_min_runs"]:
                break
        stop, reason = should_stop(samples, clock() - t0, r)
        if stop:
            break
    out = summarize(samples)
    out["warmup_runs"] = warm
    out["stop_reason"] = reason
    return out


# ---- device facts ----------------------------------------------------------------------
def _read(path, limit=65536):
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")
    except (IOError, OSError):
        return ""


def _run(cmd, timeout=5):
    try:
        out = subprocess.check_output(cmd, stderr=subprocess.DEVNULL, timeout=timeout)
        return out.decode("utf-8", "replace").strip()
    except Exception:
        return ""


def cpu_facts():
    info = _read("/proc/cpuinfo", 1 << 20)
    model, flags, hardware, part = "", "", "", ""
    for line in info.splitlines():
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key in ("model name", "cpu model") and not model:
            model = value
        elif key in ("flags", "features") and not flags:
            flags = value
        elif key == "hardware" and not hardware:
            hardware = value
        elif key == "cpu part" and not part:
            part = value
    if not model:
        model = hardware or (("ARM part " + part) if part else "") or platform.processor() or platform.machine()
    return model, sorted(set(flags.split()))


def llc_bytes():
    """The size of the CPU's last-level cache in bytes (the highest cache level sysfs lists), or 0."""
    best_level, size = -1, 0
    for i in range(16):
        base = "/sys/devices/system/cpu/cpu0/cache/index" + str(i) + "/"
        text = _read(base + "size").strip().upper()
        if not text:
            break
        if _read(base + "type").strip() == "Instruction":
            continue
        try:
            level = int(_read(base + "level").strip() or 0)
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            value = int(text.rstrip("KMG")) * mult
        except ValueError:
            continue
        if level > best_level:
            best_level, size = level, value
    return size


def gpu_facts():
    gpus, driver = [], ""
    out = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if parts and parts[0]:
            gpus.append(parts[0])
            if len(parts) > 1:
                driver = parts[1]
    board = _read("/proc/device-tree/model").strip("\x00 \n")
    tegra = _read("/etc/nv_tegra_release").splitlines()
    if tegra and not driver:
        driver = tegra[0].strip("# ").strip()
    if board and "jetson" in board.lower() and not gpus:
        gpus.append(board + " (integrated GPU)")
    return gpus, driver, board


def os_facts():
    pretty = ""
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            pretty = line.split("=", 1)[1].strip().strip('"')
    return {"system": platform.system(), "release": platform.release(), "distro": pretty}


def hello():
    facts = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "os": os_facts(),
        "hostname": platform.node(),
        "cores": os.cpu_count() or 1,
    }
    try:
        facts["usable_cores"] = len(os.sched_getaffinity(0))
    except Exception:
        facts["usable_cores"] = facts["cores"]
    facts["cpu_model"], facts["cpu_flags"] = cpu_facts()
    facts["llc_bytes"] = llc_bytes()
    facts["gpus"], facts["gpu_driver"], facts["board"] = gpu_facts()
    try:
        import numpy
    except ImportError:
        return {"ok": False, "missing": "numpy",
                "error": "numpy is not installed on the device: run `pip3 install numpy` there"}
    facts["numpy"] = numpy.__version__
    try:
        # lazy: the device may lack onnxruntime; the facts then say so instead of failing
        import onnxruntime
    except ImportError as e:
        gpu = bool(facts["gpus"])
        pkg = "onnxruntime-gpu" if gpu else "onnxruntime"
        return {"ok": False, "missing": pkg,
                "error": ("onnxruntime is not installed for " + sys.executable + " on the device (" + str(e)
                          + "): run `pip3 install " + pkg + "` there"
                          + (" (on a Jetson, the onnxruntime-gpu wheel for your JetPack)" if gpu else ""))}
    facts["runtime"] = "onnxruntime"
    facts["runtime_version"] = onnxruntime.__version__
    facts["providers"] = list(onnxruntime.get_available_providers())
    return {"ok": True, "facts": facts}


# ---- int8: onnxruntime's own static quantization ----------------------------------------
class _FeedReader(object):
    """A CalibrationDataReader over a list of feed dicts (duck-typed: the quantizer only calls
    get_next; subclassing would import onnxruntime.quantization at module load)."""

    def __init__(self, feeds):
        self.feeds = list(feeds)
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.feeds):
            return None
        self.pos += 1
        return self.feeds[self.pos - 1]

    def rewind(self):
        self.pos = 0


def quantize_file(src, dst, calibration, per_channel=True, activations="uint8"):
    """Quantize the ONNX file `src` into `dst` with onnxruntime's static quantizer: its
    pre-processing first (shape inference and the Conv+BatchNorm folding the runtime does
    anyway: without it the quantizer brackets BatchNorm with its own Q/DQ pair), then QDQ
    format, per-channel int8 weights, 8-bit activations calibrated (MinMax) on `calibration`,
    a list of feed dicts. This is the form onnxruntime fuses into QLinearConv, QGemm,
    QLinearMatMul and friends. Activations are uint8 by default (U8S8: MLAS's fast path on x86;
    on an AVX2 CPU without VNNI, ResNet-18 ran 1.6x faster than fp32 as U8S8 and no faster as the
    quantizer's default S8S8); `activations="int8"` makes both symmetric int8, the
    explicit-quantization form TensorRT requires. Needs the onnx package (the quantizer is built on it)."""
    import logging
    try:
        # lazy: only quantizing needs the quantizer, which a device may lack
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise RuntimeError("int8 needs onnxruntime's quantization tools, which need the onnx package "
                           "(%s): run `pip3 install onnx` where the model is quantized" % (e,))
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer warns on the root logger
    try:
        import onnx  # lazy: present wherever the quantizer is (it imports onnx itself)
        # One self-contained file: the pre-processor's optimized copy would lose the path of
        # external weights (and its in-memory form breaks on Reshape shapes).
        inline, pre = dst + ".inline.onnx", dst + ".pre.onnx"
        onnx.save(onnx.load(src), inline)
        try:
            quant_pre_process(inline, pre, skip_symbolic_shape=True)
        except Exception:  # a graph its optimizer cannot take: quantize it as it is
            pre = inline
        symmetric = activations == "int8"
        quantize_static(pre, dst, _FeedReader(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else None)
        for tmp in (inline, pre):
            if os.path.exists(tmp):
                os.remove(tmp)
    finally:
        logging.getLogger().setLevel(quiet)
    return dst


# ---- measuring -------------------------------------------------------------------------
class Runner(object):
    def __init__(self):
        # lazy: imported on the device, once the facts have shown they are there
        import numpy as np
        import onnxruntime as ort
        self.np = np
        self.ort = ort
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.scratch = tempfile.mkdtemp(prefix="hwnas-runner-", dir=base)
        self.pool = None
        self.cache = {}  # cache_key -> (session, feeds, outputs, dir)
        self.count = 0

    def close(self):
        self.cache = {}
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _pool(self, seed):
        if self.pool is None:
            rs = self.np.random.RandomState(seed)
            self.pool = rs.standard_normal(1 << 20).astype(self.np.float32)
        return self.pool

    def write_weights(self, path, fills, seed):
        """Random weights: N(0,1)/sqrt(fan_in) (scale given), positive for variances."""
        np = self.np
        pool = self._pool(seed)
        size = 0
        for f in fills:
            size = max(size, int(f["offset"]) + 4 * int(f["numel"]))
        buf = np.empty(size // 4 + 1, dtype=np.float32)
        start = 0
        for f in fills:
            n, o = int(f["numel"]), int(f["offset"]) // 4
            if n <= len(pool) - start:
                chunk = pool[start:start + n]
            else:
                chunk = np.resize(pool[start:], n)
            start = (start + 7919 * (n % 97 + 1)) % (len(pool) // 2)
            kind = f.get("fill", "normal")
            if kind == "positive":
                buf[o:o + n] = 1.0 + 0.25 * np.tanh(chunk)  # in (0.75, 1.25): valid variances
            elif kind == "small":
                buf[o:o + n] = 0.01 * chunk
            else:
                buf[o:o + n] = float(f.get("scale", 1.0)) * chunk
        with open(path, "wb") as fh:
            fh.write(buf.tobytes())

    def session(self, job, workdir):
        ort = self.ort
        s = job.get("session", {})
        with open(os.path.join(workdir, "model.onnx"), "wb") as fh:
            fh.write(base64.b64decode(job["model"]))
        self.write_weights(os.path.join(workdir, WEIGHTS_FILE), job.get("fills", []), int(job.get("seed", 0)))
        path = os.path.join(workdir, "model.onnx")
        if s.get("int8") and not s.get("quantized"):
            # The target runs int8: measure the model as the runtime runs it quantized, calibrated
            # on random inputs (latency does not depend on the scales' values).
            calibration = [self.feeds(job, extra_seed=k) for k in range(2)]
            trt = "TensorrtExecutionProvider" in s.get("providers", [])
            path = quantize_file(path, os.path.join(workdir, "model.int8.onnx"), calibration,
                                 activations="int8" if trt else "uint8")
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(s.get("threads", 1))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        providers = list(s.get("providers", ["CPUExecutionProvider"]))
        options = []
        for p in providers:
            opt = {}
            if p == "TensorrtExecutionProvider":
                opt["trt_engine_cache_enable"] = "True"
                opt["trt_engine_cache_path"] = os.path.join(self.scratch, "trt-cache")
                if s.get("fp16"):
                    opt["trt_fp16_enable"] = "True"
                if s.get("int8"):  # explicit quantization: TensorRT reads the QDQ nodes' scales
                    opt["trt_int8_enable"] = "True"
            options.append(opt)
        sess = ort.InferenceSession(path, so,
                                    providers=providers, provider_options=options)
        return sess

    def feeds(self, job, extra_seed=0):
        np = self.np
        rs = np.random.RandomState(int(job.get("seed", 0)) + 1 + 1000 * extra_seed)
        feeds = {}
        for inp in job["inputs"]:
            feeds[inp["name"]] = rs.uniform(-1.0, 1.0, size=tuple(inp["shape"])).astype(np.float32)
        return feeds

    def forget(self, keys):
        n = 0
        for k in keys or []:
            if self.cache.pop(k, None) is not None:
                n += 1
        return n

    def measure(self, job):
        key = job.get("cache_key")
        if key and key in self.cache:
            sess, feeds, outputs = self.cache[key]
        else:
            self.count += 1
            workdir = os.path.join(self.scratch, "job%d" % self.count)
            os.mkdir(workdir)
            try:
                sess = self.session(job, workdir)
            finally:
                # The session holds what it needs (an mmap survives the unlink).
                shutil.rmtree(workdir, ignore_errors=True)
            feeds = self.feeds(job)
            outputs = [o.name for o in sess.get_outputs()]
            if key:
                self.cache[key] = (sess, feeds, outputs)

        def run():
            sess.run(outputs, feeds)

        t0 = time.time()
        stats = measure_callable(run, job.get("stop"), float(job.get("delay_ms", 0.0)))
        stats["wall_s"] = time.time() - t0
        return {"ok": True, "id": job.get("id"), "stats": stats, "providers": sess.get_providers()}


def serve(stdin, stdout):
    def send(obj):
        stdout.write(json.dumps(obj) + "\n")
        stdout.flush()

    runner = None
    try:
        while True:
            line = stdin.readline()
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                send({"ok": False, "error": "bad JSON line"})
                continue
            op = msg.get("op")
            if op == "hello":
                send(hello())
            elif op == "measure":
                try:
                    if runner is None:
                        runner = Runner()
                    send(runner.measure(msg))
                except Exception as e:  # report and keep serving
                    send({"ok": False, "id": msg.get("id"), "error": "%s: %s" % (type(e).__name__, e)})
            elif op == "forget":
                forgot = runner.forget(msg.get("keys")) if runner is not None else 0
                send({"ok": True, "forgot": forgot, "kept": len(runner.cache) if runner is not None else 0})
            elif op == "bye":
                send({"ok": True, "bye": True})
                break
            else:
                send({"ok": False, "error": "unknown op %r" % (op,)})
    finally:
        if runner is not None:
            runner.close()


def main():
    stdout = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    serve(sys.stdin, stdout)


if __name__ == "__main__":
    main()
