"""Property-based fuzzing of the loaders and the static scanners (hypothesis, deterministic).

Inputs: the real fixtures (clean_cnn.pt, clean_cnn.onnx), small well-formed files of every format,
hostile pickles and polyglots from tests/hostile, and random bytes; mutated by byte edits biased
towards file heads and tails, where the structure lives (zip central directory, pickle opcodes,
protobuf graph, safetensors header). Properties: the only exception is AuditorInputError (or a
subclass), and no payload ever runs (the marker file never appears).

Bounded for the test run (well under 60 s); AUDITOR_FUZZ_SCALE=20 runs twenty times as many examples.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.errors import AuditorInputError
from auditor.loading import LoadRequest, load_model
from auditor.loading.pickle_scan import scan_file
from auditor.loading.safety import inspect_file
from hostile import corpus

SCALE = float(os.environ.get("AUDITOR_FUZZ_SCALE", "1"))
FIXTURES = corpus.FIXTURES


def fuzz_settings(examples: int):
    return settings(deadline=None, max_examples=max(1, int(examples * SCALE)), derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _tiny_onnx() -> bytes:
    """A classifier whose file is mostly graph structure, not weights: Flatten, Gemm (4 -> 2)."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 4], [0.5, -0.5] * 4)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _seeds(marker: Path) -> dict[str, tuple[str, bytes]]:
    """name -> (file suffix, bytes)."""
    import torch
    from safetensors.torch import save

    legacy = io.BytesIO()
    torch.save({"w": torch.arange(6.0).reshape(2, 3)}, legacy, _use_new_zipfile_serialization=False)
    header, data = corpus.clean_safetensors()
    return {
        "fixture_pt": (".pt", (FIXTURES / "clean_cnn.pt").read_bytes()),
        "fixture_onnx": (".onnx", (FIXTURES / "clean_cnn.onnx").read_bytes()),
        "tiny_onnx": (".onnx", _tiny_onnx()),
        "small_zip": (".pt", corpus.write_zip(corpus.clean_zip_members())),
        "legacy": (".pt", legacy.getvalue()),
        "safetensors": (".safetensors", corpus.pack_safetensors(header, data)),
        "tiny_safetensors": (".safetensors", save({"w": torch.zeros(3)})),
        "torchscript": (".pt", corpus.write_zip(corpus.torchscript_members())),
        "evil_pickle": (".pt", corpus.os_system(marker)),
        "evil_memo": (".pt", corpus._memo(marker)),
        "evil_proto0": (".pt", corpus._proto0(marker)),
        "evil_zip": (".pt", corpus.evil_zip(marker)),
        "evil_polyglot": (".pt", corpus._polyglot_bare(marker)),
    }


class Seeds(dict):
    def __repr__(self) -> str:  # keeps hypothesis' failure reports readable
        return f"<{len(self)} seed files>"


@pytest.fixture(scope="module")
def seeds(workdir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Seeds(_seeds(workdir / "MARKER"))


EDIT = st.tuples(
    st.sampled_from(["set", "insert", "delete", "truncate"]),
    st.sampled_from(["head", "tail", "anywhere"]),
    st.integers(0, 2**32),
    st.binary(min_size=1, max_size=8),
)


def mutate(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for kind, region, offset, chunk in edits:
        span = min(len(out), 4096) or 1
        spread = offset * 2654435761  # hypothesis favours small integers: scatter them over the file
        pos = {"head": offset % span, "tail": len(out) - 1 - offset % span}.get(region, spread % (len(out) or 1))
        pos = max(0, min(pos, len(out)))
        if kind == "set":
            out[pos : pos + len(chunk)] = chunk
        elif kind == "insert":
            out[pos:pos] = chunk
        elif kind == "delete":
            del out[pos : pos + len(chunk) * 16]
        else:
            del out[pos:]
    return bytes(out)


PREFIXES = [b"", b"PK\x03\x04", b"PK\x05\x06", b"\x80\x02", b"\x80\x04\x95", b"c", b"(", b"\x08\x07\x12",
            b"\x10\x00\x00\x00\x00\x00\x00\x00{", b"\x02\x00\x00\x00\x00\x00\x00\x00{}"]


def remutate_member(archive: bytes, edits) -> bytes:
    """Mutate the pickles inside a zip and re-zip it, so CRCs and offsets stay valid."""
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    return corpus.write_zip([(n, mutate(d, edits) if n.endswith(".pkl") else d) for n, d in members])


@st.composite
def hostile_bytes(draw, seeds: dict) -> tuple[str, bytes]:
    mode = draw(st.integers(0, 5))
    if mode == 0:  # random bytes behind a format's magic
        suffix = draw(st.sampled_from([".pt", ".onnx", ".safetensors", ".bin"]))
        return suffix, draw(st.sampled_from(PREFIXES)) + draw(st.binary(max_size=2048))
    edits = draw(st.lists(EDIT, min_size=1, max_size=4))
    if mode == 1:  # well-formed zip, mutated pickles
        suffix, data = seeds[draw(st.sampled_from(["small_zip", "torchscript", "evil_zip"]))]
        return suffix, remutate_member(data, edits)
    suffix, data = seeds[draw(st.sampled_from(sorted(seeds)))]
    return suffix, mutate(data, edits)


def _write(workdir: Path, suffix: str, data: bytes) -> Path:
    path = workdir / f"model{suffix}"
    for old in workdir.glob("model.*"):
        old.unlink()
    path.write_bytes(data)
    return path


def _run(workdir: Path, call) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call()
    except AuditorInputError:
        pass
    assert not (workdir / "MARKER").exists(), "a payload ran"


@fuzz_settings(2000)
@given(sample=st.data())
def test_fuzz_pickle_scan(workdir, seeds, sample):
    path = _write(workdir, *sample.draw(hostile_bytes(seeds)))
    _run(workdir, lambda: scan_file(path))


@fuzz_settings(1500)
@given(sample=st.data())
def test_fuzz_serialization_inspection(workdir, seeds, sample):
    path = _write(workdir, *sample.draw(hostile_bytes(seeds)))
    _run(workdir, lambda: inspect_file(path))


@fuzz_settings(800)
@given(sample=st.data())
def test_fuzz_load_model(workdir, seeds, sample):
    path = _write(workdir, *sample.draw(hostile_bytes(seeds)))
    _run(workdir, lambda: load_model(LoadRequest(path, arch="auditor.zoo:small_cnn", input_shape=(1, 28, 28))))
