"""The `.lgb` predictor file: one text file, a versioned JSON header and LightGBM text models.

Layout (UTF-8 text, no pickle anywhere)::

    HWNAS-PREDICTOR 1\\n                 magic and file-format version
    <header JSON on one line>\\n          schema_version, target, fingerprint, feature schema,
                                         calibration, fallbacks, adapters, model index
    <model 0 text><model 1 text>...      booster.model_to_string() of each model, concatenated;
                                         the header's "models" maps name -> [offset, length]
    #sha256 <hex digest of everything above>\\n

A truncated file misses the trailer or has a short payload; a corrupted one fails the
digest; a file written by a newer hwnas has a higher schema version. Each case raises
`PredictorFileError` with a message that names the file and the fix.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from predictors.errors import PredictorStageError

MAGIC = "HWNAS-PREDICTOR"
FORMAT_VERSION = 1
SCHEMA_VERSION = 1


class PredictorFileError(PredictorStageError, ValueError):
    """The predictor file is missing, truncated, corrupted or of an unsupported schema."""


def write_predictor_file(path: str | os.PathLike[str], header: dict[str, Any], models: dict[str, str]) -> None:
    """Write header + models atomically (temp file, then rename)."""
    header = dict(header)
    header["schema_version"] = SCHEMA_VERSION
    index: dict[str, list[int]] = {}
    parts: list[bytes] = []
    offset = 0
    for name, text in models.items():
        data = text.encode("utf-8")
        index[name] = [offset, len(data)]
        parts.append(data)
        offset += len(data)
    header["models"] = index
    body = f"{MAGIC} {FORMAT_VERSION}\n".encode() + json.dumps(header, sort_keys=True).encode() + b"\n" + b"".join(parts)
    digest = hashlib.sha256(body).hexdigest()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(body + f"#sha256 {digest}\n".encode())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _check_first_line(first: bytes, path: Path) -> None:
    """The magic and a file-format version this hwnas reads."""
    magic: str | None
    version: int | None
    try:
        magic, version_text = first.decode("ascii").split(" ")
        version = int(version_text)
    except (UnicodeDecodeError, ValueError):
        magic, version = None, None
    if magic != MAGIC or version is None:  # version is None only when magic is
        raise PredictorFileError(f"{path} is not an hwnas predictor file (it does not start with {MAGIC!r}); "
                                 "pass a .lgb file written by `train-predictor`")
    if version > FORMAT_VERSION:
        raise PredictorFileError(f"{path} uses predictor file format {version}, newer than this hwnas supports "
                                 f"({FORMAT_VERSION}); upgrade hwnas or rebuild the predictor with this version")


def _parse_header(line: bytes, path: Path) -> dict[str, Any]:
    try:
        header: dict[str, Any] = json.loads(line)
        return header
    except json.JSONDecodeError as e:
        raise PredictorFileError(f"{path}: the header is not valid JSON ({e}); rebuild the predictor") from None


def read_predictor_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header alone (target, fingerprint, ...), read from the file's first two lines without
    checking the checksum: enough to choose among predictor files; `read_predictor_file` checks
    the whole file when one is loaded."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            first, header_line = fh.readline(), fh.readline()
    except OSError as e:
        raise PredictorFileError(f"cannot read predictor file {path}: {e}") from None
    _check_first_line(first.rstrip(b"\n"), path)
    return _parse_header(header_line, path)


def read_predictor_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(header, {model name: LightGBM model text}); raises PredictorFileError on any defect."""
    path = Path(path)
    if not path.exists():
        raise PredictorFileError(f"predictor file {path} does not exist; build one from a latency table "
                                 "(train-predictor, hwnas.Predictor().fit(table).save(path))")
    raw = path.read_bytes()
    first = raw.partition(b"\n")[0]
    _check_first_line(first, path)
    trailer_at = raw.rfind(b"#sha256 ")
    if trailer_at < 0 or not raw.endswith(b"\n"):
        raise PredictorFileError(f"{path} is truncated (its checksum trailer is missing); copy it again or "
                                 "rebuild it with `train-predictor`")
    body, trailer = raw[:trailer_at], raw[trailer_at:].decode("ascii", "replace").strip()
    expected = trailer.split(" ", 1)[1] if " " in trailer else ""
    if hashlib.sha256(body).hexdigest() != expected:
        raise PredictorFileError(f"{path} is corrupted (checksum mismatch); copy it again or rebuild it with "
                                 "`train-predictor`")
    header_line, _, payload = body[len(first) + 1:].partition(b"\n")
    header = _parse_header(header_line, path)
    schema = header.get("schema_version")
    if not isinstance(schema, int):
        raise PredictorFileError(f"{path}: the header has no schema_version; rebuild the predictor")
    if schema > SCHEMA_VERSION:
        raise PredictorFileError(f"{path} has predictor schema version {schema}, newer than this hwnas supports "
                                 f"({SCHEMA_VERSION}); upgrade hwnas or rebuild the predictor with this version")
    models = {}
    for name, (offset, length) in header.get("models", {}).items():
        if offset + length > len(payload):
            raise PredictorFileError(f"{path} is truncated (model {name!r} ends past the end of the file); "
                                     "rebuild it with `train-predictor`")
        models[name] = payload[offset:offset + length].decode("utf-8")
    header["_file_sha256"] = expected  # not written back: `save` builds a new header
    return header, models


__all__ = ["PredictorFileError", "write_predictor_file", "read_predictor_file", "read_predictor_header", "SCHEMA_VERSION", "FORMAT_VERSION"]
