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

# Fields that define "the same device measured the same way".
IDENTITY_FIELDS = ("cpu_model", "cpu_flags", "cores", "machine", "gpu", "gpu_driver", "os",
                   "runtime", "runtime_version", "provider", "precision", "threads", "batch")


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


def describe_diff(diff: list[tuple[str, Any, Any]], a_name: str = "table", b_name: str = "device") -> str:
    parts = []
    for field, x, y in diff:
        if field == "cpu_flags":
            xs, ys = set(str(x or "").split()), set(str(y or "").split())
            only_a, only_b = sorted(xs - ys)[:6], sorted(ys - xs)[:6]
            parts.append(f"cpu_flags ({a_name} only: {' '.join(only_a) or '-'}; {b_name} only: {' '.join(only_b) or '-'})")
        else:
            parts.append(f"{field} ({a_name}: {x!r}, {b_name}: {y!r})")
    return "; ".join(parts)


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
    from . import device_runner
    ans = device_runner.hello()
    if not ans.get("ok"):
        from .errors import ProfilingError
        raise ProfilingError(ans.get("error", "this machine cannot run the device runner"))
    return make_fingerprint(ans["facts"], target)


__all__ = ["IDENTITY_FIELDS", "make_fingerprint", "fingerprint_hash", "diff_fingerprints",
           "describe_diff", "default_table_name", "device_label", "effective_provider", "local_fingerprint", "slug"]
