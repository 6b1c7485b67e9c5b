"""TorchScript archives are programs: the source pass and the compiled-graph pass refuse what reaches
outside the tensors, honest exports (scripted and traced) load and audit; zip containers that two
readers would read differently are refused."""

from __future__ import annotations

import io
import warnings
import zipfile

import pytest
import torch

from auditor.errors import UnsafeModelError
from auditor.loading import LoadRequest, load_model
from auditor.loading.safety import inspect_file
from auditor.loading.torchscript_code import inspect_graphs, inspect_sources
from auditor.loading.torchscript_ops import ATEN_OPS, PRIM_OPS
from auditor.loading.zip_container import container_problems, name_problem
from auditor.zoo import small_cnn

from conftest import CHEAP_SCAN, run_auditor

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated


def _archive(module) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(module, buf)
    return buf.getvalue()


def _sources(data: bytes):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return inspect_sources(zf)


def _with_code(data: bytes, edit) -> bytes:
    """The archive with its code files rewritten by hand, as an attacker can."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            body = src.read(info)
            dst.writestr(info.filename, edit(body.decode()).encode() if info.filename.endswith(".py") else body)
    return out.getvalue()


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return small_cnn().eval()


@pytest.mark.parametrize("export", ["script", "trace"])
def test_honest_exports_pass_both_passes_and_load(tmp_path, cnn, export):
    module = torch.jit.script(cnn) if export == "script" else torch.jit.trace(cnn, torch.zeros(1, 1, 28, 28))
    path = tmp_path / f"{export}.pt"
    path.write_bytes(_archive(module))
    code = _sources(path.read_bytes())
    assert code.findings == [] and any(c.endswith(".Linear") for c in code.classes), code
    assert inspect_graphs(torch.jit.load(str(path)), code.classes) == []
    report = inspect_file(path)
    assert report.ok and any("allow-list" in line for line in report.info), report
    handle = load_model(LoadRequest(path, input_shape=(1, 28, 28)))
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(handle.logits(x), cnn(x), atol=1e-5)


class _Saves(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, "/nonexistent/never-written")
        return x


class _Prints(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("side effect")
        return x


class _Reseeds(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)
        return x


@pytest.mark.parametrize("module, source_says, graph_says", [
    (_Saves, "torch.save (writes a file)", "aten::save (writes a file)"),
    (_Prints, "print() (writes to standard output)", "prim::Print (writes to standard output)"),
    (_Reseeds, "torch.manual_seed (reseeds", "aten::manual_seed (reseeds"),
])
def test_each_pass_refuses_side_effects_on_its_own(module, source_says, graph_says):
    scripted = torch.jit.script(module())
    data = _archive(scripted)
    code = _sources(data)
    assert any(source_says in line and ".forward" in line for line in code.findings), code.findings
    # the graph pass does not rely on the source pass: it reads what torch compiled
    graph = inspect_graphs(scripted, code.classes)
    assert any(graph_says in line and ".forward" in line for line in graph), graph


def test_source_pass_follows_statement_order():
    """A name is local only after its assignment: `print = print(...)` calls the builtin."""
    data = _with_code(_archive(torch.jit.script(_Saves())),
                      lambda code: code.replace("    torch.save(x, \"/nonexistent/never-written\")\n",
                                                "    print = print(\"x\")\n"))
    assert any("print() (writes to standard output)" in f for f in _sources(data).findings)


@pytest.mark.parametrize("line, says", [
    ("_0 = ops.quantized.add(x, x, 1.0, 0)", "operator namespace 'quantized'"),
    ("_0 = __torch__.torch.classes.my.Thing()", "custom class"),
    ("_0 = (x).save(x)", "method 'save'"),
    ("_0 = os.system(\"true\")", "os.system"),
    ("_0 = lambda: x", "Lambda"),
    ("import os", "Import statement"),
    ("_0 = torch.nn.functional.relu(x)", "torch.nn.functional.relu"),
])
def test_source_pass_refuses_constructs_outside_the_exporters_vocabulary(line, says):
    class Identity(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    data = _with_code(_archive(torch.jit.script(Identity())),
                      lambda code: code.replace("    return x\n", f"    {line}\n    return x\n"))
    findings = _sources(data).findings
    assert any(says in f for f in findings), findings


def test_setstate_is_refused_before_torch_reads_the_file(tmp_path, monkeypatch):
    class Stateful(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = 2.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

        @torch.jit.export
        def __getstate__(self) -> tuple[float, bool]:
            return (self.scale, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[float, bool]) -> None:  # harmless, and still refused
            self.scale = state[0]
            self.training = state[1]

    path = tmp_path / "stateful.pt"
    path.write_bytes(_archive(torch.jit.script(Stateful())))

    def must_not_load(*args, **kwargs):
        raise AssertionError("torch.jit.load ran on an archive with __setstate__")

    monkeypatch.setattr(torch.jit, "load", must_not_load)
    with pytest.raises(UnsafeModelError, match=r"Stateful.__setstate__ is code torch.jit.load would run.*re-export"):
        load_model(LoadRequest(path, input_shape=(1, 4)))


def test_allow_lists_hold_no_side_effect_and_name_real_operators():
    for name in ("save", "from_file", "_print", "manual_seed", "seed", "wait", "to_here", "backward",
                 "_unsafe_index", "sparse_coo_tensor", "_test_string_default"):
        assert name not in ATEN_OPS, name
    assert {"Print", "PythonOp", "rpc_async", "awaitable_wait"}.isdisjoint(PRIM_OPS)
    known = {s.name for s in torch._C._jit_get_all_schemas()}
    # every listed operator exists in the installed torch (a stale list would hide a renamed op)
    assert {f"aten::{n}" for n in ATEN_OPS} <= known
    assert {f"prim::{n}" for n in PRIM_OPS} <= known


@pytest.mark.parametrize("name, says", [
    ("archive/../../x", "zip-slip"), ("/abs/x", "absolute"), ("C:/x", "absolute"), ("a\\b", "backslash"),
    ("a/\x00b", "control"), ("a/\nb", "control"), ("", "empty"),
])
def test_member_names_no_exporter_writes(name, says):
    assert says in name_problem(name)


def test_honest_member_names_pass():
    for name in ("archive/data.pkl", "archive/code/__torch__/a.py", "my..model/data/0", "archive/.data/version"):
        assert name_problem(name) is None, name


def test_overlapping_members_are_refused(tmp_path):
    """Two central-directory entries whose bytes overlap: a zip bomb's trick, and two readers' disagreement."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/version", b"3\n")
    data = bytearray(buf.getvalue())
    # point the second entry's central record at the first entry's local header, then fix its name there
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        first, second = zf.infolist()
        start = zf.start_dir
    pos = start
    for info in (first, second):
        n, m, k = (int.from_bytes(data[pos + o:pos + o + 2], "little") for o in (28, 30, 32))
        if info is second:
            data[pos + 42:pos + 46] = (first.header_offset + 1).to_bytes(4, "little")
        pos += 46 + n + m + k
    path = tmp_path / "overlap.pt"
    path.write_bytes(bytes(data))
    problems = container_problems(path)
    assert problems and "archive/version" in problems[0], problems


def test_clean_checkpoints_have_no_container_problems(tmp_path, cnn):
    path = tmp_path / "weights.pt"
    torch.save(cnn.state_dict(), path)
    assert container_problems(path) == []
    script = tmp_path / "scripted.pt"
    script.write_bytes(_archive(torch.jit.script(cnn)))
    assert container_problems(script) == []


@pytest.mark.slow
@pytest.mark.parametrize("export", ["script", "trace"])
def test_torchscript_export_of_the_fixture_audits_end_to_end(tmp_path, export):
    """The issue's 'done when': plain scripted and traced exports of the fixture CNN still audit."""
    from conftest import BADNETS_PT

    net = small_cnn()
    net.load_state_dict(torch.load(BADNETS_PT, weights_only=True))
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.script(net) if export == "script" else torch.jit.trace(net, torch.zeros(1, 1, 28, 28))
    path = tmp_path / f"badnets.{export}.pt"
    path.write_bytes(_archive(module))
    run = run_auditor(tmp_path, path, "--input-size", "1,28,28", "--mean", "0.2860", "--std", "0.3530",
                      "--defense", "none", *CHEAP_SCAN)
    assert run.returncode in (0, 1), run.stderr
    checks = {c["name"]: c["outcome"] for c in run.data["checks"] if c["stage"] == "before"}
    assert checks["check_serialization_safety"] == "passed"
    assert checks["check_finite_logits"] == "passed"
    assert run.data["model"]["format"] == "torchscript"
    assert run.inputs_unchanged
