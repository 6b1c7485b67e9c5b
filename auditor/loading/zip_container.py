"""Container hygiene for zip-based model files (PyTorch checkpoints, TorchScript archives).

A gate must read a container exactly as the loader will. Two zip readers disagree on files that no
honest exporter writes: names that escape a folder (`..`, absolute paths, backslashes, control
characters), the same name twice (Python's zipfile takes the last entry, miniz inside torch the
first, and miniz compares names case-insensitively), local headers that tell another story than the
central directory (name, compression, sizes), and members whose bytes overlap. Each is refused with
the member named. Nothing is extracted or decompressed here: only the directory and the local
headers are read.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # signature .. extra length: 30 bytes
_LOCAL_SIGNATURE = b"PK\x03\x04"
_DATA_DESCRIPTOR = 0x0008
_ZIP64_SIZE = 0xFFFFFFFF


def name_problem(name: str) -> str | None:
    """Why a member name is one no honest exporter writes, or None."""
    if not name:
        return "has an empty name"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "has a NUL or control character in its name"
    if "\\" in name:
        return "has a backslash in its name"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in name.split("/"):
        return "has a '..' path segment (a zip-slip path)"
    return None


def container_problems(path: Path) -> list[str]:
    """Every hygiene problem of the zip at `path`, each naming its member; [] for a clean container."""
    problems: list[str] = []
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except Exception as exc:  # BadZipFile, struct errors, undecodable names, bad offsets ...
        return [f"corrupt zip archive: {exc}"]
    seen: dict[str, str] = {}
    for info in infos:
        name = info.orig_filename
        problem = name_problem(name)
        if problem:
            problems.append(f"zip member {name!r} {problem}")
        key = name.lower()  # torch's zip reader (miniz) looks names up case-insensitively
        if key in seen:
            same = "the same name" if seen[key] == name else f"the same name as {seen[key]!r} to torch's case-insensitive reader"
            problems.append(f"zip member {name!r} appears twice ({same}); readers disagree on which one counts")
        seen.setdefault(key, name)
    problems += _header_problems(path, infos)
    return problems


def _header_problems(path: Path, infos: list[zipfile.ZipInfo]) -> list[str]:
    problems: list[str] = []
    spans: list[tuple[int, int, str]] = []
    size = path.stat().st_size
    with path.open("rb") as fh:
        for info in infos:
            name = info.orig_filename
            if not 0 <= info.header_offset < size:
                problems.append(f"zip member {name!r}: its local header offset points outside the file")
                continue
            fh.seek(info.header_offset)
            raw = fh.read(_LOCAL.size)
            if len(raw) < _LOCAL.size or raw[:4] != _LOCAL_SIGNATURE:
                problems.append(f"zip member {name!r}: no local header where the central directory points")
                continue
            (_, _, flags, method, _, _, crc, csize, usize, name_len, extra_len) = _LOCAL.unpack(raw)
            local_name = fh.read(name_len)
            central_name = name.encode("utf-8" if info.flag_bits & 0x800 else "cp437", errors="replace")
            differs = []
            if local_name != central_name:
                differs.append(f"name {local_name!r}")
            if method != info.compress_type:
                differs.append(f"compression method {method} vs {info.compress_type}")
            if (flags ^ info.flag_bits) & ~_DATA_DESCRIPTOR & 0xFFFF:
                differs.append(f"flags {flags:#06x} vs {info.flag_bits:#06x}")
            if not (flags & _DATA_DESCRIPTOR):
                if crc != info.CRC:
                    differs.append("CRC")
                if csize != _ZIP64_SIZE and csize != info.compress_size:
                    differs.append(f"compressed size {csize} vs {info.compress_size}")
                if usize != _ZIP64_SIZE and usize != info.file_size:
                    differs.append(f"size {usize} vs {info.file_size}")
            if differs:
                problems.append(f"zip member {name!r}: local header disagrees with the central directory ({', '.join(differs)})")
                continue
            start = info.header_offset
            end = start + _LOCAL.size + name_len + extra_len + info.compress_size
            if end > size:
                problems.append(f"zip member {name!r} runs past the end of the file")
                continue
            spans.append((start, end, name))
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            problems.append(f"zip members {first!r} and {second!r} overlap (the same bytes read twice)")
    return problems
