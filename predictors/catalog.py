"""Which predictor fits a device: a predictor's recorded fingerprint against the device's.

A predictor's latencies are those of the machine its table was profiled on. Two machines
of one cloud "class" can differ (an Intel Xeon and an AMD EPYC VM both answer to
`local-cpu`), and the same target name then means another speed and other fusions. So a
predictor is chosen by how closely its fingerprint matches the device that will run the
model, not by its target name alone:

    from predictors.catalog import find_predictor
    from profiling.fingerprint import local_fingerprint
    from profiling.targets import get_target
    match = find_predictor("data/predictors", "local-cpu", local_fingerprint(get_target("local-cpu")))
    match.path, match.level, match.differences
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from profiling.fingerprint import (describe_diff, device_label, diff_fingerprints, fingerprint_hash,
                                   speed_flag_diff)

from .fileformat import PredictorFileError, read_predictor_header

# How well a predictor's fingerprint matches a device, best first.
SAME_DEVICE = 2      # every identity field agrees: the table was measured on this kind of device
SAME_HARDWARE = 1    # same CPU model and flags (and GPU); another runtime version, OS or core count
OTHER_DEVICE = 0     # another CPU or GPU: its latencies are another machine's

# A difference in these is another machine; cpu_flags count only through their speed-relevant
# part (profiling.fingerprint.SPEED_FLAGS): a hypervisor or mitigation flag changes no kernel.
_HARDWARE_FIELDS = ("cpu_model", "machine", "gpu")


@dataclass(frozen=True)
class PredictorMatch:
    path: Path
    target: str
    fingerprint_hash: str
    device: str          # the predictor's device, as a person names it ("AMD EPYC")
    level: int           # SAME_DEVICE, SAME_HARDWARE or OTHER_DEVICE
    differences: str     # the identity fields that differ, "" when none
    n_speed_flags: int = 0    # speed-relevant CPU flags present on one side only
    n_fields: int = 0         # identity fields that differ

    @property
    def exact(self) -> bool:
        return self.level == SAME_DEVICE

    def describe(self, device: str = "this device") -> str:
        if self.exact:
            return f"{self.path.name} (measured on {self.device}, fingerprint {self.fingerprint_hash}: {device})"
        what = "the same hardware" if self.level == SAME_HARDWARE else "another device"
        return (f"{self.path.name} was measured on {what} ({self.device}, fingerprint {self.fingerprint_hash}); "
                f"it differs from {device} in {self.differences}")


def compare_fingerprints(predictor_fp: dict[str, Any], device_fp: dict[str, Any]) -> tuple[int, str]:
    """(match level, the differing identity fields in words) of a predictor's fingerprint
    against a device's. Another CPU model, architecture or GPU, or a speed-relevant CPU flag
    on one side only (AVX-512, VNNI, AMX, AVX2, ...), is another device."""
    diff = diff_fingerprints(predictor_fp, device_fp)
    if not diff:
        return SAME_DEVICE, ""
    only_p, only_d = speed_flag_diff(predictor_fp, device_fp)
    hardware = bool(only_p or only_d) or any(field in _HARDWARE_FIELDS for field, _, _ in diff)
    return (OTHER_DEVICE if hardware else SAME_HARDWARE), describe_diff(diff, "predictor", "device")


def mismatch_note(predictor_fp: dict[str, Any], device_fp: dict[str, Any], where: str = "this machine") -> str | None:
    """One sentence when a predictor was profiled on other hardware than `where` (None when the
    hardware is the same), naming the fields that differ (the speed-relevant CPU flags among
    them), since two machines can share a model string ("AMD EPYC") and not their kernels."""
    level, differences = compare_fingerprints(predictor_fp, device_fp)
    if level != OTHER_DEVICE:
        return None
    a, b = device_label(predictor_fp), device_label(device_fp)
    names = f"on {a}" if a == b else f"on {a}, not {b}"
    return (f"the predictor was profiled on other hardware than {where} ({names}; they differ in: {differences}): "
            f"its latencies are another machine's")


def match_predictor(path: str | os.PathLike[str], fingerprint: dict[str, Any]) -> PredictorMatch:
    """How the predictor file at `path` matches a device's `fingerprint` (header only; fast)."""
    header = read_predictor_header(path)
    fp = header.get("fingerprint") or {}
    level, differences = compare_fingerprints(fp, fingerprint)
    only_p, only_d = speed_flag_diff(fp, fingerprint)
    return PredictorMatch(Path(path), str((header.get("target") or {}).get("name", "unknown")),
                          fingerprint_hash(fp), device_label(fp), level, differences,
                          n_speed_flags=len(only_p) + len(only_d), n_fields=len(diff_fingerprints(fp, fingerprint)))


def rank_predictors(paths: Iterable[str | os.PathLike[str]], target: str, fingerprint: dict[str, Any]
                    ) -> list[PredictorMatch]:
    """The predictors among `paths` built for `target`, best match first. Within a level the
    closer fingerprint wins (fewer speed-relevant CPU flags on one side only, then fewer
    differing identity fields), then the fingerprint hash and the file name: the order
    depends on the files' content, never on their times (after `git clone` those are the
    checkout order). Files that are not readable predictors are skipped."""
    matches = []
    for p in paths:
        try:
            m = match_predictor(p, fingerprint)
        except PredictorFileError:
            continue
        if m.target == target:
            matches.append(m)
    return sorted(matches, key=lambda m: (-m.level, m.n_speed_flags, m.n_fields, m.fingerprint_hash, m.path.name))


def find_predictor(directory: str | os.PathLike[str], target: str, fingerprint: dict[str, Any]) -> PredictorMatch | None:
    """The best-matching predictor for `target` under `directory` (recursively), or None."""
    return next(iter(rank_predictors(sorted(Path(directory).glob("**/*.lgb")), target, fingerprint)), None)


__all__ = ["PredictorMatch", "SAME_DEVICE", "SAME_HARDWARE", "OTHER_DEVICE", "compare_fingerprints", "match_predictor",
           "mismatch_note",
           "rank_predictors", "find_predictor"]
