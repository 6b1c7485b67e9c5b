"""Static inspection of a model file for the serialization-safety check: nothing is loaded or run.

Findings are reasons to refuse the file (code execution, reaching outside the model's folder,
native custom ops); problems mean the file could not be read with confidence (also a refusal).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AuditorInputError
from . import files
from .onnx_files import DTYPE_BYTES, STANDARD_DOMAINS, external_target, model_nodes, model_tensors, text
from .pickle_scan import scan_file
from .torchscript_code import inspect_sources
from .zip_container import container_problems


@dataclass
class SafetyReport:
    path: str
    format: str
    findings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings and not self.problems


def inspect_file(path: Path, max_file_bytes: int = files.DEFAULT_MAX_BYTES, max_tensor_bytes: int = 2 * 2**30) -> SafetyReport:
    from .formats import detect

    size = files.check_readable(path, max_file_bytes)
    try:
        fmt, probe = detect(path, size)
    except AuditorInputError as exc:
        return SafetyReport(str(path), "unknown", problems=[str(exc)])
    report = SafetyReport(str(path), fmt.label(probe))
    fmt.inspect(probe, report, max_tensor_bytes)
    return report


def container_findings(path: Path, report: SafetyReport) -> None:
    report.findings.extend(f"container: {p}" for p in container_problems(path))


def pickle_findings(path: Path, report: SafetyReport) -> None:
    result = scan_file(path)
    allowed = sorted({f.qualname for f in result.findings if f.allowed})
    for finding in result.unsafe:
        report.findings.append(f"imports {finding.qualname} (in {finding.member}): not on the allow-list, could run code")
    report.problems.extend(result.problems)
    report.info.append(f"pickles scanned: {', '.join(result.members) or 'none'}")
    if allowed:
        report.info.append(f"allowed globals: {', '.join(allowed)}")


def torchscript_code_findings(path: Path, report: SafetyReport) -> None:
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            code = inspect_sources(zf)
    except Exception as exc:  # BadZipFile, OSError, undecodable names ...
        report.problems.append(f"corrupt TorchScript archive: {exc}")
        return
    report.findings.extend(code.findings)
    report.info.append(f"TorchScript code read before loading: {len(code.members)} files, {len(code.classes)} classes"
                       + ("; every call is on the allow-list of pure tensor operators" if not code.findings else ""))


def safetensors_findings(path: Path, size: int, report: SafetyReport) -> None:
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    data_size = size - 8 - length
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = (int(v) for v in entry["data_offsets"])
            count = 1
            for d in entry["shape"]:
                count *= int(d)
        except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: Infinity in the JSON
            report.problems.append(f"header entry {name!r} is malformed")
            continue
        spans.append((start, end, name))
        if end > data_size or start > end:
            report.problems.append(f"tensor {name!r} claims bytes {start}..{end}, the file holds {data_size}")
    spans.sort()
    if spans and (spans[0][0] != 0 or any(a[1] != b[0] for a, b in zip(spans, spans[1:])) or spans[-1][1] != data_size):
        report.problems.append("tensor byte ranges overlap, leave gaps, or do not cover the data (a lying header)")
    report.info.append(f"{len(spans)} tensors; safetensors holds data only, no code")


def onnx_findings(path: Path, max_tensor_bytes: int, report: SafetyReport) -> None:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        report.problems.append(f"not a readable ONNX model: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return
    folder = path.resolve().parent
    for tensor in model_tensors(model):
        count = 1
        for d in tensor.dims:
            count *= d
        if count * DTYPE_BYTES.get(tensor.data_type, 8) > max_tensor_bytes:
            report.findings.append(f"tensor {tensor.name!r} declares {count:,} elements, over the size limit")
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            location = entries.get("location", "")
            if external_target(folder, location) is None:
                report.findings.append(f"tensor {tensor.name!r} reads external data from {location!r}, outside the model's folder")
            if not all(entries.get(key, "0").isdigit() for key in ("offset", "length")):
                report.problems.append(f"tensor {tensor.name!r} has a malformed external-data offset or length")
    domains = {text(op.domain) for op in model.opset_import} | {text(n.domain) for n in model_nodes(model)}
    custom = sorted(domains - STANDARD_DOMAINS)
    if custom:
        report.findings.append(f"custom op domains {', '.join(custom)}: they need native code from outside the file")
    ops = sorted({text(n.op_type) for n in model_nodes(model)})
    opsets = ", ".join(f"{text(o.domain) or 'ai.onnx'} {o.version}" for o in model.opset_import)
    report.info.append(f"opsets: {opsets}")
    report.info.append(f"operators: {', '.join(ops)}")
