"""File facts read before any parsing: size limits, sha256, a safetensors header (the format itself is told
by content, not extension, in `formats/`)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from ..errors import AuditorInputError

DEFAULT_MAX_BYTES = 4 * 2**30  # 4 GiB


def check_readable(path: Path, max_bytes: int) -> int:
    if not path.exists():
        raise AuditorInputError(f"{path}: no such file")
    if not path.is_file():
        raise AuditorInputError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise AuditorInputError(f"{path}: the file is empty (0 bytes)")
    if size > max_bytes:
        raise AuditorInputError(f"{path}: {size:,} bytes is over the limit of {max_bytes:,} (--max-file-bytes)")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise AuditorInputError(f"{path}: cannot open: {exc.strerror}") from None
    return size


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safetensors_header(path: Path, size: int) -> dict | None:
    """The parsed JSON header when the file is shaped like safetensors, else None."""
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return None
        (length,) = struct.unpack("<Q", head)
        if length < 2 or length > min(size - 8, 100 * 2**20):
            return None
        raw = fh.read(length)
    if not raw.lstrip().startswith(b"{"):
        return None
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):  # bad UTF-8 or JSON; absurdly deep nesting
        return None
    return header if isinstance(header, dict) else None
