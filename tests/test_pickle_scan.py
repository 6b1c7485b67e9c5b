"""Static pickle scan: malicious pickles are flagged without ever being loaded."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import pickletools
import subprocess
import zipfile

import pytest
import torch
from torch import nn

from auditor.errors import AuditorInputError
from auditor.loading.pickle_scan import (
    ALLOWED_GLOBALS,
    PickleFinding,
    is_allowed,
    scan_file,
    scan_pickle_bytes,
)


class _Reduce:
    """Pickles as `func(*args)`: what an attacker's object would run on load."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _shell(marker) -> str:
    return f"touch {marker}"


def _unsafe(findings):
    return {f.qualname for f in findings if not f.allowed}


def _sbu(text: str) -> bytes:  # SHORT_BINUNICODE
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "scanning executed pickle code"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.BatchNorm1d(3))


@pytest.mark.parametrize(
    ("func", "expected"),
    [
        (os.system, {"posix.system", "nt.system", "os.system"}),
        (builtins.exec, {"builtins.exec"}),
        (eval, {"builtins.eval"}),
        (subprocess.Popen, {"subprocess.Popen"}),
    ],
)
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_reduce_is_flagged(tmp_path, marker, func, expected, protocol):
    arg = _shell(marker) if func in (os.system, subprocess.Popen) else f"open({str(marker)!r}, 'w')"
    data = pickle.dumps(_Reduce(func, (arg,)), protocol=protocol)
    findings, problems = scan_pickle_bytes(data)
    assert _unsafe(findings) & expected and not problems

    path = tmp_path / "model.pt"
    path.write_bytes(data)
    result = scan_file(path)
    assert result.container == "pickle" and not result.ok and result.unsafe
    assert result.members == ("<pickle>",)


def test_nested_pickle_loads_is_flagged(marker):
    inner = pickle.dumps(_Reduce(os.system, (_shell(marker),)))
    data = pickle.dumps(_Reduce(pickle.loads, (inner,)), protocol=4)
    findings, _ = scan_pickle_bytes(data)
    assert "_pickle.loads" in _unsafe(findings)


def test_memo_trick_stack_global_is_resolved(marker):
    # Operands are memoised, buried under other pushes, and fetched back for STACK_GLOBAL.
    data = (
        b"\x80\x04" + _sbu("os") + b"\x940" + _sbu("collections") + b"0"  # "os" -> memo 0, decoy popped
        + _sbu("system") + b"q\x05" + b"0"  # "system" -> memo 5
        + _sbu("torch") + _sbu("Size") + b"0" + b"0"  # allowed-looking decoys, popped
        + b"h\x00h\x05\x93" + _sbu(_shell(marker)) + b"\x85R."
    )
    pickletools.dis(data, out=io.StringIO())  # a well-formed pickle
    findings, problems = scan_pickle_bytes(data)
    assert [(f.module, f.name, f.allowed) for f in findings] == [("os", "system", False)]
    assert not problems


def test_stack_global_with_computed_operands_fails_closed():
    # The module name comes out of a call, so it cannot be known statically.
    data = (
        b"\x80\x04" + _sbu("builtins") + _sbu("str") + b"\x93" + _sbu("torch") + b"\x85R"
        + _sbu("Size") + b"\x93)R."
    )
    findings, problems = scan_pickle_bytes(data)
    assert any("STACK_GLOBAL with non-constant operands" in p for p in problems)
    assert "torch.Size" not in {f.qualname for f in findings}


def test_mark_hides_operands_from_stack_global():
    data = b"\x80\x04" + _sbu("torch") + _sbu("Size") + b"(\x93."
    _, problems = scan_pickle_bytes(data)
    assert problems


def test_malicious_pickle_after_benign_one(tmp_path, marker):
    data = pickle.dumps({"w": [1.0, 2.0]}) + pickle.dumps(_Reduce(os.system, (_shell(marker),)), protocol=2)
    findings, problems = scan_pickle_bytes(data)
    assert _unsafe(findings) & {"posix.system", "nt.system"} and not problems
    path = tmp_path / "w.bin"
    path.write_bytes(data)
    assert not scan_file(path).ok


def test_py2_names_are_mapped_like_pickle_does():
    findings, _ = scan_pickle_bytes(b"\x80\x02c__builtin__\neval\n.")
    assert [(f.qualname, f.allowed) for f in findings] == [("builtins.eval", False)]
    findings, _ = scan_pickle_bytes(b"\x80\x02c__builtin__\nset\n)\x85R.")
    assert [(f.qualname, f.allowed) for f in findings] == [("builtins.set", True)]


def test_extension_opcode_and_garbage_are_problems():
    assert scan_pickle_bytes(b"\x80\x02\x82\x01.")[1]  # EXT1: global from copyreg's registry
    findings, problems = scan_pickle_bytes(b"(S'touch x'\nios\nsystem\n.")  # INST
    assert _unsafe(findings) == {"os.system"} and not problems
    assert scan_pickle_bytes(b"\x80\x02\xff.")[1]
    assert scan_pickle_bytes(b"")[1]


def test_allow_list():
    assert is_allowed("torch._utils", "_rebuild_tensor_v2") and is_allowed("torch", "float32")
    assert is_allowed("torch", "BFloat16Storage") and "collections.OrderedDict" in ALLOWED_GLOBALS
    for name in ("eval", "exec", "getattr", "open", "__import__", "compile", "setattr"):
        assert not is_allowed("builtins", name)
    assert not is_allowed("torch", "_utils._rebuild_tensor_v2")  # getattr chain, not an exact pair
    assert not is_allowed("__torch__.foo", "Bar") and is_allowed("__torch__.foo", "Bar", torchscript=True)
    assert not is_allowed("torch.jit._pickle", "build_intlist")
    assert PickleFinding("a.b", "c", "<pickle>", False).qualname == "a.b.c"


def test_state_dict_scans_clean(tmp_path, model):
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    result = scan_file(path)
    assert result.ok, (result.unsafe, result.problems)
    assert result.container == "zip" and result.members == ("weights/data.pkl",)
    assert "torch._utils._rebuild_tensor_v2" in {f.qualname for f in result.findings}


def test_legacy_state_dict_scans_clean_and_appended_pickle_is_found(tmp_path, model, marker):
    path = tmp_path / "legacy.bin"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)
    result = scan_file(path)
    assert result.container == "pickle" and result.ok, result.problems

    path.write_bytes(path.read_bytes() + pickle.dumps(_Reduce(os.system, (_shell(marker),))))
    assert {"posix.system", "nt.system"} & {f.qualname for f in scan_file(path).unsafe}


def test_full_module_pickle_is_flagged(tmp_path, model):
    path = tmp_path / "full.pt"
    torch.save(model, path)
    unsafe = {f.qualname for f in scan_file(path).unsafe}
    assert {"torch.nn.modules.container.Sequential", "torch.nn.modules.linear.Linear"} <= unsafe


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_scans_clean(tmp_path, model):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(model.eval()), str(path))
    result = scan_file(path)
    assert result.ok, (result.unsafe, result.problems)
    assert any(m.endswith("constants.pkl") for m in result.members)
    assert any(f.module.startswith("__torch__") for f in result.findings)


def test_torch_names_outside_torchscript_are_unsafe(tmp_path):
    path = tmp_path / "fake.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fake/data.pkl", b"\x80\x02c__torch__.evil\nThing\n)\x81.")
    assert {f.qualname for f in scan_file(path).unsafe} == {"__torch__.evil.Thing"}


def test_zip_extensionless_member_and_bomb_guard(tmp_path, marker):
    evil = pickle.dumps(_Reduce(os.system, (_shell(marker),)), protocol=2)
    path = tmp_path / "arch.bin"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("arch/data", evil)
        zf.writestr("arch/big.pkl", b"\x80\x02" + b"N0" * 5000 + b"N.")
    result = scan_file(path, max_member_bytes=1000)
    assert result.members == ("arch/data",) and result.unsafe
    assert any("arch/big.pkl" in p for p in result.problems)


def test_polyglot_zip_and_pickle(tmp_path, marker):
    path = tmp_path / "poly.pt"
    evil = pickle.dumps(_Reduce(os.system, (_shell(marker),)), protocol=2)
    path.write_bytes(evil)
    with zipfile.ZipFile(path, "a") as zf:  # appending keeps the pickle at offset 0
        zf.writestr("poly/data.pkl", pickle.dumps({"a": 1}, protocol=2))
    assert zipfile.is_zipfile(path)
    result = scan_file(path)
    assert result.container == "zip" and "<pickle>" in result.members
    assert {"posix.system", "nt.system"} & {f.qualname for f in result.unsafe}


def test_truncated_and_empty_files(tmp_path, model):
    raw = pickle.dumps({"a": (1, 2, "three")}, protocol=2)
    path = tmp_path / "trunc.pkl"
    path.write_bytes(raw[:-4])
    result = scan_file(path)
    assert not result.ok and any("truncated" in p for p in result.problems)

    zipped = tmp_path / "zipped.pt"
    torch.save(model.state_dict(), zipped)
    zipped.write_bytes(zipped.read_bytes()[:300])
    assert not scan_file(zipped).ok

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    result = scan_file(empty)
    assert result.container == "unknown" and not result.ok and result.problems

    text = tmp_path / "notes.txt"
    text.write_text("hello world\n")
    assert scan_file(text).problems == ("not a pickle or zip archive",)

    findings, problems = scan_pickle_bytes(raw[:-4])
    assert problems == ["truncated pickle stream in <pickle>"]


def test_unreadable_path_raises_input_error(tmp_path):
    with pytest.raises(AuditorInputError, match="missing.pt"):
        scan_file(tmp_path / "missing.pt")
    with pytest.raises(AuditorInputError):
        scan_file(tmp_path)
