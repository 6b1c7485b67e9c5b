"""Static scan of the globals a pickle would import, without ever unpickling it.

Opcodes are walked with `pickletools.genops` while a small model of the unpickler's stack and memo
resolves STACK_GLOBAL operands. Anything the model cannot resolve is a *problem* (fail closed), never
a guess. Covers raw pickle streams (several back to back, legacy torch.save included), PyTorch zip
checkpoints, TorchScript archives and zip/pickle polyglots.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickletools
import stat
import struct
import zipfile
from dataclasses import dataclass

from ..errors import AuditorInputError

_STORAGE_ELEMENT_SIZE = {
    "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "DoubleStorage": 8, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
    "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "QInt8Storage": 1, "QUInt8Storage": 1,
    "QInt32Storage": 4,
}
_DTYPES = ("float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8",
           "bool", "complex64", "complex128")

ALLOWED_GLOBALS: frozenset[str] = frozenset(
    {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor", "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state", "torch._utils._rebuild_qtensor",
        "torch._utils._rebuild_sparse_tensor", "torch._utils._rebuild_device_tensor_from_numpy",
        "torch._tensor._rebuild_from_type_v2", "torch.Size", "torch.device", "torch.serialization._get_layout",
        "torch.nn.parameter.Parameter", "torch.storage.UntypedStorage", "torch.storage.TypedStorage",
        "torch.per_tensor_affine", "torch.contiguous_format", "torch.channels_last",
        "builtins.set", "builtins.frozenset", "builtins.slice", "builtins.complex", "builtins.bytearray",
        "_codecs.encode",
        "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
        "numpy.dtype", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    }
    | {f"torch.{name}" for name in _STORAGE_ELEMENT_SIZE}
    | {f"torch.{name}" for name in _DTYPES}
)
# Only inside a TorchScript archive, whose pickles torch.jit.load resolves against the archive's code/.
_TORCHSCRIPT_HELPERS = frozenset({"build_intlist", "build_tensorlist", "build_doublelist", "build_boollist",
                                  "build_tensor_from_id", "restore_type_tag"})

_LEGACY_ELEMENT_SIZE = {**_STORAGE_ELEMENT_SIZE, "UntypedStorage": 1}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy (non-zip) torch.save file
_MAX_ITEMS = 5_000_000  # stack/memo entries: bounds memory on hostile streams
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
                         "SHORT_BINSTRING"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_EXT_OPS = frozenset({"EXT1", "EXT2", "EXT4"})


def is_allowed(module: str, name: str, torchscript: bool = False) -> bool:
    # A dotted name (proto 4 getattr chain) never matches: the allow-list is exact module/name pairs.
    if "." in name or not name:
        return False
    if torchscript and (module == "__torch__" or module.startswith("__torch__.")):
        # the archive's own classes; torch.classes are C++ classes whose __setstate__ is native code
        return not (module == "__torch__.torch.classes" or module.startswith("__torch__.torch.classes."))
    if torchscript and module == "torch.jit._pickle" and name in _TORCHSCRIPT_HELPERS:
        return True
    return f"{module}.{name}" in ALLOWED_GLOBALS


@dataclass(frozen=True)
class PickleFinding:
    module: str
    name: str
    member: str
    allowed: bool

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class PickleScanResult:
    path: str
    container: str  # "zip", "pickle" or "unknown"
    members: tuple[str, ...]
    findings: tuple[PickleFinding, ...]
    problems: tuple[str, ...]

    @property
    def unsafe(self) -> tuple[PickleFinding, ...]:
        return tuple(f for f in self.findings if not f.allowed)

    @property
    def ok(self) -> bool:
        return not self.unsafe and not self.problems


class _Oversized(Exception):
    pass


class _Reader:
    """Seekable view of a stream of known size whose reads never allocate past the data or a cap."""

    def __init__(self, raw, size: int, cap: int):
        self._raw, self.size, self._cap = raw, size, cap

    def _remaining(self) -> int:
        return max(0, self.size - self._raw.tell())

    def read(self, n: int = -1) -> bytes:
        n = self._remaining() if n is None or n < 0 else min(n, self._remaining())
        if n > self._cap:
            raise _Oversized(n)
        return self._raw.read(n)

    def readline(self, n: int = -1) -> bytes:
        line = self._raw.readline(min(self._cap + 1, self._remaining()))
        if len(line) > self._cap:
            raise _Oversized(len(line))
        return line

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._raw.seek(pos, whence)


_UNKNOWN = object()  # a value the model does not track
_MARK = object()


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


class _Walk:
    """State of one scanned stream: results plus what the legacy torch format needs."""

    def __init__(self, member: str, torchscript: bool):
        self.member, self.torchscript = member, torchscript
        self._findings: dict[PickleFinding, None] = {}
        self.problems: list[str] = []
        self.storage_types: dict[str, str] = {}  # legacy storage key -> storage class name
        self.imports = False  # saw an opcode that imports something

    def problem(self, text: str) -> None:
        text = f"{text} in {self.member}"
        if text not in self.problems:
            self.problems.append(text)

    def found(self, module: str, name: str, proto: int) -> _Global:
        self.imports = True
        if proto < 3 and (module, name) in _compat_pickle.NAME_MAPPING:  # as pickle's fix_imports does
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif proto < 3 and module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        self._findings[PickleFinding(module, name, self.member, is_allowed(module, name, self.torchscript))] = None
        return _Global(module, name)

    @property
    def findings(self) -> list[PickleFinding]:
        return list(self._findings)

    def one_pickle(self, stream: _Reader) -> tuple[bool, list[str]]:
        """Walk one pickle up to its STOP (genops raises on malformed data).

        Returns whether it was the legacy magic number and the string constants it pushed."""
        stack: list = []
        memo: dict = {}
        proto, magic, strings = 0, False, []

        # Like both unpicklers, nothing below the most recent MARK can be reached.
        def top():
            if not stack or stack[-1] is _MARK:
                self.problem("pickle stack underflow")
                return _UNKNOWN
            return stack[-1]

        def pop():
            value = top()
            if stack and stack[-1] is not _MARK:
                stack.pop()
            return value

        def pop_mark() -> list:
            items = []
            while stack and stack[-1] is not _MARK:
                items.append(stack.pop())
            if not stack:
                self.problem("pickle MARK missing")
            else:
                stack.pop()
            return items[::-1]

        for op, arg, pos in pickletools.genops(stream):
            name = op.name
            if len(stack) > _MAX_ITEMS or len(memo) > _MAX_ITEMS:
                raise _Oversized(len(stack))
            if name in _STRING_OPS:
                stack.append(arg)
                strings.append(arg)
            elif name in ("GLOBAL", "INST"):
                # Re-read the raw lines: genops unescapes them, pickle only decodes them as UTF-8.
                end = stream.tell()
                stream.seek(pos + 1)
                module, gname, _ = stream.read(end - pos - 1).split(b"\n")
                stream.seek(end)
                value = self.found(module.decode("utf-8"), gname.decode("utf-8"), proto)
                if name == "INST":
                    pop_mark()
                    value = _UNKNOWN
                stack.append(value)
            elif name == "STACK_GLOBAL":
                gname, module = pop(), pop()
                if type(module) is str and type(gname) is str:
                    stack.append(self.found(module, gname, proto))
                else:
                    self.imports = True
                    self.problem(f"STACK_GLOBAL with non-constant operands at byte {pos}")
                    stack.append(_UNKNOWN)
            elif name in _PUT_OPS:
                memo[arg] = top()
            elif name == "MEMOIZE":
                memo[len(memo)] = top()
            elif name in _GET_OPS:
                if arg not in memo:
                    self.problem(f"memo key {arg} read before it was stored at byte {pos}")
                stack.append(memo.get(arg, _UNKNOWN))
            elif name == "DUP":
                stack.append(top())
            elif name == "POP" and stack and stack[-1] is _MARK:
                stack.pop()  # both unpicklers let POP discard a mark
            elif name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"):
                count = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "EMPTY_TUPLE": 0}.get(name)
                items = pop_mark() if count is None else [pop() for _ in range(count)][::-1]
                stack.append(tuple(items))
            elif name in _EXT_OPS:
                self.imports = True  # the copyreg extension registry maps codes to arbitrary globals
                self.problem(f"extension-registry opcode {name} (code {arg}) at byte {pos}")
                stack.append(_UNKNOWN)
            elif name == "BINPERSID":
                pid = pop()
                if (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
                        and isinstance(pid[1], _Global) and type(pid[2]) is str):
                    self.storage_types[pid[2]] = pid[1].name
                stack.append(_UNKNOWN)
            else:
                if name == "PROTO":
                    proto = arg
                elif name in ("LONG1", "LONG4", "LONG") and arg == _LEGACY_MAGIC:
                    magic = True
                before = op.stack_before
                if pickletools.markobject in before:
                    pop_mark()
                    before = before[: before.index(pickletools.markobject)]
                for _ in before:
                    pop()
                stack.extend(_MARK if after is pickletools.markobject else _UNKNOWN for after in op.stack_after)
        return magic, strings

    def stream(self, stream: _Reader) -> int:
        """Scan pickles back to back until the data ends; returns how many were complete."""
        complete, legacy = 0, False
        while stream.tell() < stream.size:
            try:
                magic, strings = self.one_pickle(stream)
            except _Oversized:
                self.problem("oversized pickle opcode argument or stack")
                break
            except Exception as exc:  # genops: ValueError; bad UTF-8, split on a short line, ...
                text = str(exc)
                truncated = any(word in text for word in ("exhausted", "remain", "no newline", "not enough"))
                self.problem("truncated pickle stream" if truncated else f"invalid pickle data ({text[:120]})")
                break
            complete += 1
            legacy = legacy or (complete == 1 and magic)
            if legacy and complete == 5:  # magic, protocol, sys_info, object, storage keys; then raw data
                if not self._skip_storages(stream, keys=strings):
                    break
        if complete == 0 and stream.size == 0:
            self.problem("empty pickle stream")
        return complete

    def _skip_storages(self, stream: _Reader, keys: list[str]) -> bool:
        for key in keys:
            element_size = _LEGACY_ELEMENT_SIZE.get(self.storage_types.get(key, ""))
            header = stream.read(8)
            if not element_size or len(header) < 8:
                self.problem("unreadable legacy torch storage data")
                return False
            end = stream.tell() + struct.unpack("<q", header)[0] * element_size
            if not stream.tell() <= end <= stream.size:
                self.problem("truncated legacy torch storage data")
                return False
            stream.seek(end)
        return True


def scan_pickle_bytes(data: bytes, member: str = "<pickle>", *, torchscript: bool = False
                      ) -> tuple[list[PickleFinding], list[str]]:
    walk = _Walk(member, torchscript)
    walk.stream(_Reader(io.BytesIO(data), len(data), len(data)))
    return walk.findings, walk.problems


def _looks_like_pickle(head: bytes) -> bool:
    if head[:1] == b"\x80":
        return True
    op = pickletools.code2op.get(head[:1].decode("latin-1")) if head else None
    # Protocol 0/1 have no header; "P" (PERSID) is excluded because zip files start with "PK".
    return op is not None and op.proto <= 1 and head[:2] != b"PK"


def is_torchscript_archive(names: list[str]) -> bool:
    """A zip with code in it is a TorchScript program whatever else it holds; torch finds its records
    case-insensitively, so `ARCHIVE/CODE/X.PY` and `CONSTANTS.PKL` count too."""
    lower = [n.lower() for n in names]
    return any(n.endswith(".py") for n in lower) or any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in lower)


def _is_pkl_name(name: str) -> bool:
    # torch's zip reader (miniz) finds records case-insensitively: "archive/DATA.PKL" is its data.pkl.
    return name.lower().endswith((".pkl", ".debug_pkl"))


def _is_candidate_member(info: zipfile.ZipInfo) -> bool:
    """.pkl at any depth; extensionless files (e.g. "archive/data") at the top folder level."""
    if info.is_dir():
        return False
    parts = info.filename.split("/")
    return _is_pkl_name(info.filename) or (len(parts) <= 2 and "." not in parts[-1])


def scan_file(path, max_member_bytes: int = 2**31) -> PickleScanResult:
    path = os.fspath(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise AuditorInputError(f"{path}: not a regular file")
        with open(path, "rb") as fh:
            return _scan_open_file(path, fh, max_member_bytes)
    except OSError as exc:
        raise AuditorInputError(f"{path}: cannot read model file: {exc.strerror or exc}") from None


def _scan_open_file(path: str, fh, limit: int) -> PickleScanResult:
    size = os.fstat(fh.fileno()).st_size
    head = fh.read(2)
    fh.seek(0)
    findings: dict[PickleFinding, None] = {}
    problems: list[str] = []
    members: list[str] = []

    def add(walk: _Walk) -> None:
        members.append(walk.member)
        findings.update(dict.fromkeys(walk.findings))
        problems.extend(walk.problems)

    def result(container: str) -> PickleScanResult:
        return PickleScanResult(path, container, tuple(members), tuple(findings), tuple(problems))

    try:
        is_zip = zipfile.is_zipfile(fh)
    except Exception:  # a malformed end record (e.g. a multi-disk zip64 one) raises instead of saying no
        is_zip = True  # ZipFile below records the problem
    if is_zip:
        try:
            zf = zipfile.ZipFile(fh)
            infos = zf.infolist()
        except Exception as exc:  # BadZipFile, struct errors, bad offsets ...
            problems.append(f"corrupt zip archive: {exc}")
            infos = []
        names = [i.filename for i in infos]
        torchscript = is_torchscript_archive(names)
        for info in infos:
            if not info.filename or "\x00" in info.orig_filename:  # zipfile cuts names at a NUL, torch does not
                problems.append(f"zip member name {info.orig_filename!r} is empty or contains a NUL byte")
                continue
            if not _is_candidate_member(info):
                continue
            if info.file_size > limit:
                problems.append(f"zip member {info.filename} is {info.file_size} bytes, over the scan limit")
                continue
            try:
                with zf.open(info) as member:
                    data = member.read(1)
                    if data != b"\x80" and not _is_pkl_name(info.filename):
                        continue
                    data += member.read(limit)
            except Exception as exc:  # encrypted, unsupported compression, zlib/CRC errors ...
                problems.append(f"cannot read zip member {info.filename}: {exc}")
                continue
            walk = _Walk(info.filename, torchscript)
            walk.stream(_Reader(io.BytesIO(data), len(data), limit))
            add(walk)
        # A zip that does not start with a local file header has a prefix: torch.load then reads the
        # file as a legacy pickle and pickle.load runs the prefix (a polyglot). A pickle needs no PROTO
        # opcode, so any prefix is scanned as one, and one that is not a clean pickle is refused.
        if head != b"PK":
            fh.seek(0)
            walk = _Walk("<pickle>", torchscript=False)
            walk.stream(_Reader(fh, size, limit))
            add(walk)
        return result("zip")

    if _looks_like_pickle(head):
        fh.seek(0)
        walk = _Walk("<pickle>", torchscript=False)
        complete = walk.stream(_Reader(fh, size, limit))
        if head[:1] == b"\x80" or complete or walk.imports:
            add(walk)
            return result("pickle")
    problems.append("empty file: not a pickle or zip archive" if size == 0 else "not a pickle or zip archive")
    return result("unknown")
