"""File facts read before any parsing: size limits, sha256, the format told by content not extension."""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from pathlib import Path

from ..errors import AuditorInputError
from .pickle_scan import _looks_like_pickle, is_torchscript_archive

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


def sniff_format(path: Path, size: int) -> str:
    """One of: torch-zip, torchscript, pickle, safetensors, onnx."""
    with path.open("rb") as fh:
        head = fh.read(8)
    try:
        is_zip = zipfile.is_zipfile(path)
    except Exception:  # a malformed end record (e.g. a multi-disk zip64 one) raises instead of saying no
        is_zip = True  # ZipFile below reports it
    if is_zip:
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except Exception as exc:  # BadZipFile, OSError, undecodable names, unsupported zip versions ...
            raise AuditorInputError(f"{path}: corrupt zip archive: {exc}") from None
        if is_torchscript_archive(names):
            return "torchscript"
        return "torch-zip"
    if head[:4] == b"PK\x03\x04":
        raise AuditorInputError(f"{path}: truncated or corrupt zip archive (a PyTorch checkpoint is a zip file)")
    if head[:1] == b"\x80":
        return "pickle"
    if safetensors_header(path, size) is not None:
        return "safetensors"
    if path.suffix.lower() == ".onnx" or head[:1] in (b"\x08", b"\x12", b"\x1a", b"\x22", b"\x3a", b"\x42"):
        return "onnx"
    if _looks_like_pickle(head):  # protocol 0/1 pickles have no header; torch.load would unpickle them
        return "pickle"
    raise AuditorInputError(
        f"{path}: unrecognised model format (expected a PyTorch state_dict, TorchScript, safetensors or ONNX file)"
    )
