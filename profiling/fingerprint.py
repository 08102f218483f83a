"""Device fingerprints: what a latency table was measured on.

The runner reports raw facts about the device (`device_runner.hello`); the fingerprint
combines them with the target's runtime settings. Two tables can be merged, and a run
can resume into a table, only when their *identity* fields agree; the other fields (OS
release, distribution, Python) are recorded for information.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from .targets import Target
from . import device_runner
from .errors import ProfilingError

# Fields that define "the same device measured the same way".
IDENTITY_FIELDS = ("cpu_model", "cpu_flags", "cores", "machine", "gpu", "gpu_driver", "os",
                   "runtime", "runtime_version", "provider", "precision", "threads", "batch")

# CPU flags that change which kernels onnxruntime (MLAS) and torch pick, and so their speed:
# vector width (AVX-512 vs AVX2 vs SSE), fused multiply-add, int8 dot products (VNNI, ARM dot
# product), bf16/fp16 arithmetic and matrix tiles (AMX, SME). Two machines that agree on these
# run the same kernels; the other flags (virtualisation, security mitigations, ...) do not
# change a latency. "AMD EPYC" names a Zen 3 with AVX2 only and a Zen 4 with AVX-512 alike.
SPEED_FLAGS = (
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c",
    "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512ifma", "avx512vbmi",
    "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512_vbmi2", "avx512_bitalg", "avx_vnni",
    "avx_vnni_int8", "avx_ne_convert", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",
    "neon", "asimd", "asimdhp", "asimddp", "fphp", "i8mm", "bf16", "sve", "sve2", "sme",
)


def effective_provider(target: Target, available: list[str]) -> str:
    """The first of the target's providers that the device has (what the runtime will use)."""
    for p in target.providers:
        if p in available:
            return p
    return target.providers[0]


def make_fingerprint(facts: dict[str, Any], target: Target) -> dict[str, Any]:
    os_facts = facts.get("os", {})
    return {
        "cpu_model": facts.get("cpu_model", ""),
        "cpu_flags": " ".join(facts.get("cpu_flags", [])),
        "cores": int(facts.get("cores", 1)),
        # informational (not identity): the sampler draws `linear` weights beyond this cache
        "llc_bytes": int(facts.get("llc_bytes") or 0) or None,
        "machine": facts.get("machine", ""),
        "gpu": ", ".join(facts.get("gpus", [])) or None,
        "gpu_driver": facts.get("gpu_driver") or None,
        "board": facts.get("board") or None,
        "os": os_facts.get("system", ""),
        "os_release": os_facts.get("release", ""),
        "distro": os_facts.get("distro", ""),
        "python": facts.get("python", ""),
        "runtime": facts.get("runtime", target.runtime),
        "runtime_version": facts.get("runtime_version", ""),
        "provider": effective_provider(target, facts.get("providers", [])),
        "providers": list(target.providers),
        "precision": target.precision,
        "threads": target.resolved_threads(int(facts.get("cores", 1))),
        "batch": target.batch,
    }


def fingerprint_hash(fp: dict[str, Any]) -> str:
    ident = {k: fp.get(k) for k in IDENTITY_FIELDS}
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]


def diff_fingerprints(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Identity fields whose values differ: [(field, a_value, b_value)]."""
    return [(k, a.get(k), b.get(k)) for k in IDENTITY_FIELDS if a.get(k) != b.get(k)]


def speed_flags(fp: dict[str, Any]) -> frozenset[str]:
    """The fingerprint's CPU flags that change kernel speed (`SPEED_FLAGS`)."""
    return frozenset(str(fp.get("cpu_flags") or "").split()) & frozenset(SPEED_FLAGS)


def speed_flag_diff(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(speed-relevant flags only `a` has, those only `b` has), in `SPEED_FLAGS` order."""
    fa, fb = speed_flags(a), speed_flags(b)
    return [f for f in SPEED_FLAGS if f in fa - fb], [f for f in SPEED_FLAGS if f in fb - fa]


def describe_diff(diff: list[tuple[str, Any, Any]], a_name: str = "table", b_name: str = "device") -> str:
    """The differing identity fields in words. CPU flags name the speed-relevant ones first
    (`SPEED_FLAGS`: AVX-512, VNNI, AMX, AVX2, ...), then a few others."""
    parts = []
    for field, x, y in diff:
        if field == "cpu_flags":
            xs, ys = set(str(x or "").split()), set(str(y or "").split())
            fast = set(SPEED_FLAGS)
            only_a = [f for f in SPEED_FLAGS if f in xs - ys] + sorted((xs - ys) - fast)
            only_b = [f for f in SPEED_FLAGS if f in ys - xs] + sorted((ys - xs) - fast)
            speed = "speed-relevant flags differ" if (fast & (xs ^ ys)) else "no speed-relevant flag differs"
            parts.append(f"cpu_flags, {speed} ({a_name} only: {_few(only_a)}; {b_name} only: {_few(only_b)})")
        else:
            parts.append(f"{field} ({a_name}: {x!r}, {b_name}: {y!r})")
    return "; ".join(parts)


def _few(flags: list[str], n: int = 8) -> str:
    if not flags:
        return "-"
    return " ".join(flags[:n]) + (f" and {len(flags) - n} more" if len(flags) > n else "")


def slug(text: str, limit: int = 40) -> str:
    text = re.sub(r"\((r|tm|c)\)", "", text.lower())
    text = re.sub(r"\b(cpu|processor|@)\b", " ", text) if len(text) > 20 else text
    s = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return (s[:limit].rstrip("-")) or "device"


def device_label(fp: dict[str, Any]) -> str:
    """What a person calls the measured device: the GPU for an accelerated provider, else the
    board, else the CPU model."""
    accel = fp.get("provider") not in (None, "CPUExecutionProvider")
    return (fp.get("gpu") if accel and fp.get("gpu") else None) or fp.get("board") or fp.get("cpu_model") or "device"


def default_table_name(target: Target, fp: dict[str, Any]) -> str:
    """`<target>__<device slug>__<hash8>.parquet`, e.g. local-cpu__intel-xeon__1a2b3c4d.parquet."""
    return f"{target.name}__{slug(device_label(fp))}__{fingerprint_hash(fp)}.parquet"


def local_fingerprint(target: Target) -> dict[str, Any]:
    """This machine's fingerprint for `target`, from the same facts the device runner reports
    (its `hello`, run in this process: no subprocess)."""
    ans = device_runner.hello()
    if not ans.get("ok"):
        raise ProfilingError(ans.get("error", "this machine cannot run the device runner"))
    return make_fingerprint(ans["facts"], target)


__all__ = ["IDENTITY_FIELDS", "SPEED_FLAGS", "speed_flags", "speed_flag_diff", "make_fingerprint", "fingerprint_hash", "diff_fingerprints",
           "describe_diff", "default_table_name", "device_label", "effective_provider", "local_fingerprint", "slug"]
