"""File facts read before any parsing: size limits, sha256, a safetensors header (the format itself is told
by content, not extension, in `formats/`)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from ..errors import AuditorInputError

DEFAULT_MAX_BYTES = 4 * 2**30  # 4 GiB


MAX_FOLDER_FILES = 10_000


def check_readable(path: Path, max_bytes: int) -> int:
    """The size of a model file, or of a model folder's files together, after the limits are checked."""
    if not path.exists():
        raise AuditorInputError(f"{path}: no such file")
    if path.is_dir():
        return sum(size for _, size in folder_files(path, max_bytes))
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


def folder_files(folder: Path, max_bytes: int) -> list[tuple[str, int]]:
    """(relative name, size) of every file in a model folder, sorted; refuses what a download would not
    hold: links that leave the folder (a hub cache's links into its own blobs/ store are fine), special
    files, more than MAX_FOLDER_FILES files, or more than `max_bytes` in all."""
    root = folder.resolve()
    cache_blobs = root.parent.parent / "blobs" if root.parent.name == "snapshots" else None
    out, total = [], 0
    for entry in sorted(folder.rglob("*")):
        rel = entry.relative_to(folder).as_posix()
        if entry.is_symlink():
            target = entry.resolve()
            inside = target.is_relative_to(root) or (cache_blobs is not None and target.is_relative_to(cache_blobs))
            if not inside:
                raise AuditorInputError(f"{folder}: {rel} links outside the model folder")
        if entry.is_dir():
            continue
        if not entry.is_file():
            raise AuditorInputError(f"{folder}: {rel} is not a regular file")
        size = entry.stat().st_size
        total += size
        out.append((rel, size))
        if len(out) > MAX_FOLDER_FILES:
            raise AuditorInputError(f"{folder}: more than {MAX_FOLDER_FILES:,} files; not a model folder")
        if total > max_bytes:
            raise AuditorInputError(f"{folder}: its files hold over {max_bytes:,} bytes, the limit (--max-file-bytes)")
    if not out:
        raise AuditorInputError(f"{folder}: the folder is empty")
    return out


def sha256(path: Path) -> str:
    """A file's SHA-256; a folder's is the SHA-256 of its sorted `<sha256>  <relative name>` lines
    (what `sha256sum` prints for each file), so it changes when any file, or any name, does."""
    if path.is_dir():
        lines = "".join(f"{sha256(path / rel)}  {rel}\n" for rel, _ in folder_files(path, 2**62))
        return hashlib.sha256(lines.encode()).hexdigest()
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
