"""What a TorchScript archive's code may do, read twice: from its source before loading, from torch's
compiled graphs before anything runs.

A TorchScript archive is a program: `code/**/*.py` holds its classes and functions, and
torch.jit.load compiles them and, while unpickling `data.pkl`, calls the `__setstate__` of any class
that defines one. So:

1. `inspect_sources` (before torch sees the file) refuses any `__setstate__` at all (a byte search
   over every code member: an identifier cannot be spelled another way, so no parser of ours can be
   fooled into missing one), then parses each code file and walks every name and attribute chain
   its methods use: `torch.X` and `ops.aten.X` must be on the operator allow-list
   (`torchscript_ops`), `ops.prim.X` on the prim list, other operator namespaces, custom classes
   (`torch.classes`, native code) and unknown globals (`print`, `fork`, ...) are refused.
2. `inspect_graphs` (after torch.jit.load, before the first forward) walks every method and hook of
   every submodule as torch compiled it, calls inlined, node by node against the same lists. It
   does not depend on our reading of the source agreeing with torch's.

With no `__setstate__`, loading an archive creates objects and sets their attributes; no code of the
archive runs before step 2 has passed.
"""

from __future__ import annotations

import ast
import zipfile
from dataclasses import dataclass, field

from .torchscript_ops import ATEN_OPS, PRIM_GRAPH, PRIM_OPS, REFUSAL_REASONS

REEXPORT_HINT = ("re-export the weights instead: torch.save(model.state_dict(), 'weights.pt') "
                 "(or safetensors) and pass --arch")

# Names the serialized code may use without defining them: the interpreter's builtins and types.
GLOBAL_NAMES = frozenset("""
annotate unchecked_cast uninitialized isinstance getattr hasattr len int float bool str complex range
enumerate zip min max abs round divmod list tuple dict sorted any all sum hash ord chr hex oct bin id
NamedTuple Tensor List Tuple Dict Optional Union Final NoneType Any Device Generator Stream number Module
Enum Interface ModuleInterface Storage Layout ScalarType MemoryFormat QScheme SymInt SymFloat SymBool
__annotations__ __parameters__ __buffers__ CONSTANTS inf nan
""".split())
MATH_CONSTANTS = frozenset({"pi", "e", "inf", "nan", "tau"})
_BANNED_STATEMENTS = (ast.Import, ast.ImportFrom, ast.Global, ast.Nonlocal, ast.Try, ast.AsyncFunctionDef,
                      ast.AsyncFor, ast.AsyncWith)
_BANNED_EXPRESSIONS = (ast.Lambda, ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)


@dataclass
class CodeReport:
    """What the source pass found: refusals (one line each), and the classes the archive defines."""

    findings: list[str] = field(default_factory=list)
    classes: set[str] = field(default_factory=set)
    members: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        if line not in self.findings:
            self.findings.append(line)


def _reason(name: str) -> str:
    return REFUSAL_REASONS.get(name.rsplit(".", 1)[-1], "not on the allow-list of pure tensor operators")


def _module_name(member: str) -> str:
    """`archive/code/__torch__/a/b.py` -> `__torch__.a.b` (torch looks records up case-insensitively)."""
    lower = member.lower()
    start = lower.find("code/")
    path = member[start + 5:] if start >= 0 else member
    return path[:-3].replace("/", ".") if path.lower().endswith(".py") else path.replace("/", ".")


def is_code_member(name: str) -> bool:
    return name.lower().endswith(".py")


def inspect_sources(zf: zipfile.ZipFile, max_member_bytes: int = 64 * 2**20) -> CodeReport:
    report = CodeReport()
    trees: list[tuple[str, str, ast.Module]] = []
    for info in zf.infolist():
        if not is_code_member(info.filename):
            continue
        report.members.append(info.filename)
        if info.file_size > max_member_bytes:
            report.add(f"TorchScript code {info.filename} is {info.file_size:,} bytes, over the {max_member_bytes:,}-byte limit")
            continue
        try:
            raw = zf.read(info)
        except Exception as exc:  # bad CRC, unsupported compression, encryption ...
            report.add(f"cannot read TorchScript code {info.filename}: {exc}")
            continue
        module = _module_name(info.filename)
        try:
            tree = ast.parse(raw.decode("utf-8"), filename=info.filename)
        except (UnicodeDecodeError, SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            tree = None
            report.add(f"TorchScript code {info.filename} is not code torch's exporter writes: {type(exc).__name__}")
        if b"__setstate__" in raw:
            where = [f"{module}.{c.name}.__setstate__" for c in (tree.body if tree else []) if isinstance(c, ast.ClassDef)
                     and any(isinstance(f, ast.FunctionDef) and f.name == "__setstate__" for f in c.body)]
            what = f"TorchScript {where[0]} is" if where else f"TorchScript code {info.filename} names __setstate__,"
            report.add(f"{what} code torch.jit.load would run while reading the file (never accepted)")
        if tree is None:
            continue
        trees.append((info.filename, module, tree))
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                report.classes.add(f"{module}.{node.name}")
    methods = {n.name for _, _, tree in trees for c in tree.body if isinstance(c, ast.ClassDef)
               for n in c.body if isinstance(n, ast.FunctionDef)}
    for member, module, tree in trees:
        _SourceChecker(module, methods, report).check(tree)
    return report


class _SourceChecker:
    """Walks one code file in statement order: a name counts as local only after its assignment."""

    def __init__(self, module: str, methods: set[str], report: CodeReport):
        self.qualname, self.methods, self.report = module, methods, report
        self.where = module

    def refuse(self, what: str, reason: str) -> None:
        self.report.add(f"TorchScript {self.where} uses {what} ({reason})")

    def check(self, tree: ast.Module) -> None:
        for stmt in tree.body:
            if isinstance(stmt, ast.ClassDef):
                self.where = f"{self.qualname}.{stmt.name}"
                for base in stmt.bases + [k.value for k in stmt.keywords]:
                    self.expr(base, set())
                for item in stmt.body:
                    if isinstance(item, ast.FunctionDef):
                        self.function(item, f"{self.qualname}.{stmt.name}.{item.name}", set())
                    else:
                        self.where = f"{self.qualname}.{stmt.name}"
                        self.block([item], set())
            elif isinstance(stmt, ast.FunctionDef):
                self.function(stmt, f"{self.qualname}.{stmt.name}", set())
            else:
                self.where = self.qualname
                self.block([stmt], set())

    def function(self, fn: ast.FunctionDef, where: str, outer: set[str]) -> None:
        self.where = where
        args = fn.args
        every = args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
        for arg in every:
            if arg.annotation is not None:
                self.expr(arg.annotation, outer)
        for default in args.defaults + [d for d in args.kw_defaults if d is not None]:
            self.expr(default, outer)
        if fn.returns is not None:
            self.expr(fn.returns, outer)
        for deco in fn.decorator_list:
            self.refuse("a decorator", "not written by torch's exporter")
        self.block(fn.body, outer | {a.arg for a in every})
        self.where = where

    def block(self, body: list[ast.stmt], defined: set[str]) -> set[str]:
        for stmt in body:
            defined = self.statement(stmt, defined)
        return defined

    def statement(self, stmt: ast.stmt, defined: set[str]) -> set[str]:
        if isinstance(stmt, _BANNED_STATEMENTS):
            self.refuse(f"a {type(stmt).__name__} statement", "not written by torch's exporter")
            return defined
        if isinstance(stmt, ast.FunctionDef):  # a closure, e.g. the body of a fork
            where = self.where
            self.function(stmt, f"{where}.{stmt.name}", defined)
            self.where = where
            return defined | {stmt.name}
        if isinstance(stmt, ast.ClassDef):
            self.refuse("a nested class", "not written by torch's exporter")
            return defined
        if isinstance(stmt, ast.If):
            self.expr(stmt.test, defined)
            return self.block(stmt.body, set(defined)) | self.block(stmt.orelse, set(defined))
        if isinstance(stmt, ast.While):
            self.expr(stmt.test, defined)
            return self.block(stmt.body + stmt.orelse, set(defined))
        if isinstance(stmt, ast.For):
            self.expr(stmt.iter, defined)
            inner = defined | _stored(stmt.target)
            return self.block(stmt.body + stmt.orelse, inner)
        if isinstance(stmt, ast.With):
            inner = set(defined)
            for item in stmt.items:
                self.expr(item.context_expr, inner)
                if item.optional_vars is not None:
                    inner |= _stored(item.optional_vars)
            return self.block(stmt.body, inner)
        # simple statements: every value is read before any target is bound
        targets: list[ast.expr] = []
        if isinstance(stmt, ast.Assign):
            targets = list(stmt.targets)
        elif isinstance(stmt, (ast.AugAssign, ast.AnnAssign)):
            targets = [stmt.target]
        for child in ast.iter_child_nodes(stmt):
            if child in targets and isinstance(child, ast.Name):
                if isinstance(stmt, ast.AugAssign):
                    self.name(child.id, defined, called=False)
                continue
            if isinstance(child, ast.expr):
                self.expr(child, defined, store=child in targets)
        for target in targets:
            defined = defined | _stored(target)
        return defined

    def expr(self, node: ast.expr, defined: set[str], called: bool = False, store: bool = False) -> None:
        if isinstance(node, _BANNED_EXPRESSIONS):
            self.refuse(f"a {type(node).__name__} expression", "not written by torch's exporter")
        elif isinstance(node, ast.Name):
            if not store:
                self.name(node.id, defined, called)
        elif isinstance(node, ast.Attribute):
            chain = _chain(node)
            if chain and chain[0] not in defined:
                self.global_chain(chain)
            elif chain is None:
                self.expr(node.value, defined)
            if called and (chain is None or chain[0] in defined) and node.attr not in self.methods:
                self.refuse(f"method {node.attr!r}", "no class of the archive defines it")
        elif isinstance(node, ast.Call):
            self.expr(node.func, defined, called=True)
            for arg in node.args:
                self.expr(arg, defined)
            for kw in node.keywords:
                self.expr(kw.value, defined)
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    self.expr(child, defined, store=store and isinstance(node, (ast.Tuple, ast.List, ast.Starred)))

    def name(self, name: str, defined: set[str], called: bool) -> None:
        if name in defined or name in GLOBAL_NAMES:
            return
        self.refuse(f"{name}{'()' if called else ''}", REFUSAL_REASONS.get(name, "an unknown name"))

    def global_chain(self, chain: list[str]) -> None:
        root, dotted = chain[0], ".".join(chain)
        if root == "torch" and len(chain) == 2:
            if chain[1] not in ATEN_OPS:
                self.refuse(dotted, _reason(chain[1]))
        elif root == "ops" and len(chain) == 3:
            allowed = {"aten": ATEN_OPS, "prim": PRIM_OPS}.get(chain[1])
            if allowed is None:
                self.refuse(dotted, f"operator namespace {chain[1]!r}: native code outside the allow-list")
            elif chain[2] not in allowed:
                self.refuse(dotted, _reason(chain[2]))
        elif root == "__torch__":
            if chain[1:3] == ["torch", "classes"]:
                self.refuse(dotted, "a TorchScript custom class: native code outside the archive")
        elif root == "math" and len(chain) == 2:
            if chain[1] not in ATEN_OPS and chain[1] not in MATH_CONSTANTS:
                self.refuse(dotted, _reason(chain[1]))
        elif root == "CONSTANTS" and len(chain) == 2:
            return
        else:
            self.refuse(dotted, "not on the allow-list of pure tensor operators")


def _chain(node: ast.expr) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _stored(target: ast.expr) -> set[str]:
    return {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}


# ---------------------------------------------------------------- compiled graphs, after loading


def inspect_graphs(module, code_classes: set[str]) -> list[str]:
    """Refusals for every node of every method and hook of `module` and its submodules, as compiled."""
    import torch

    findings: list[str] = []
    for path, sub in module.named_modules():
        c = sub._c
        owner = c._type().qualified_name()
        functions = [(f"{owner}.{name}", c._get_method(name).graph) for name in c._method_names()]
        functions += [(f"{owner}.{hook.name} (forward hook)", hook.graph)
                      for hook in list(c._get_forward_hooks()) + list(c._get_forward_pre_hooks())]
        for where, graph in functions:
            graph = graph.copy()
            torch._C._jit_pass_inline(graph)
            _walk_block(graph.block(), where, code_classes, findings)
    return findings


def _walk_block(block, where: str, code_classes: set[str], findings: list[str]) -> None:
    for node in block.nodes():
        kind = node.kind()
        ns, _, op = kind.partition("::")
        problem = None
        if ns == "aten":
            problem = None if op in ATEN_OPS else _reason(op)
        elif ns == "prim":
            if op not in PRIM_OPS and op not in PRIM_GRAPH:
                problem = _reason(op)
            elif op in ("CallMethod", "Enter", "Exit", "CreateObject", "CallFunction"):
                problem = _object_problem(node, op, code_classes)
        else:
            problem = f"operator namespace {ns!r}: native code outside the allow-list"
        if problem:
            line = f"TorchScript {where} calls {kind} ({problem})"
            if line not in findings:
                findings.append(line)
        for inner in node.blocks():
            _walk_block(inner, where, code_classes, findings)


def _object_problem(node, op: str, code_classes: set[str]) -> str | None:
    if op == "CallFunction":
        return "a call the inliner could not resolve"
    value = node.output() if op == "CreateObject" else node.inputsAt(0)
    kind = value.type().kind()
    if kind == "InterfaceType":  # resolved at run time to a submodule, whose methods are walked too
        return None
    name = value.type().qualified_name() if hasattr(value.type(), "qualified_name") else str(value.type())
    if name.startswith("__torch__.torch.classes."):
        return "a TorchScript custom class: native code outside the archive"
    if name not in code_classes:
        return f"an object of class {name}, which the archive's code does not define"
    return None
