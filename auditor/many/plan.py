"""What `auditor scan-many` audits: the models of a folder or the lines of a manifest, each with the
`auditor scan` options it runs with. Everything is checked here, before any audit starts."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import click

from ..errors import AuditorInputError

MODEL_SUFFIXES = {".pt", ".pth", ".bin", ".onnx", ".safetensors", ".ckpt"}
# scan-many writes each audit's reports into its own folder, so these scan options are its own.
OWNED = {"output_dir", "html", "json_path", "junitxml", "sarif", "cyclonedx", "quiet"}


@dataclass(frozen=True)
class Audit:
    model: Path              # absolute
    args: tuple[str, ...]    # `auditor scan` options, paths made absolute, without the output options
    name: str                # its folder under --output-dir
    where: str               # for messages: the manifest line or the folder entry


def _scan_options() -> tuple[dict, dict]:
    """`auditor scan`'s options by flag (--scan-param, --no-repair, -q) and by manifest key (scan_param)."""
    from ..cli import scan

    by_flag, by_key = {}, {}
    for p in scan.params:
        if isinstance(p, click.Option):
            for flag in (*p.opts, *p.secondary_opts):
                by_flag[flag] = p
            for flag in p.opts:
                if flag.startswith("--"):
                    by_key[flag[2:].replace("-", "_")] = p
    return by_flag, by_key


def _absolute(args: list[str], base: Path) -> list[str]:
    """Resolve the path values in scan options against base, so an audit runs the same from any folder
    (its own output folder, a Ray worker). --data is a path only when base/value exists (else a bundled name)."""
    by_flag, _ = _scan_options()
    out, i = [], 0
    while i < len(args):
        token = args[i]
        flag, eq, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        p = by_flag.get(flag)
        if p is None or p.is_flag or (not eq and i + 1 >= len(args)):
            out.append(token)
            i += 1
            continue
        value = inline if eq else args[i + 1]
        if (isinstance(p.type, click.Path) or p.name == "data") and value and not Path(value).is_absolute():
            if p.name != "data" or (base / value).exists():
                value = str((base / value).resolve())
        out += [f"{flag}={value}"] if eq else [flag, value]
        i += 1 if eq else 2
    return out


def check_args(model: Path, args: list[str], where: str) -> None:
    """Parse model + args exactly as `auditor scan` will, so a typo stops the run before anything starts."""
    from ..cli import scan

    by_flag, _ = _scan_options()
    for token in args:
        p = by_flag.get(token.partition("=")[0] if token.startswith("--") else token)
        if p is not None and p.name in OWNED:
            raise AuditorInputError(f"{where}: {token} is set by scan-many itself (each audit's reports go to <output-dir>/<model name>/)")
    try:
        scan.make_context("scan", [str(model), *args], resilient_parsing=False)
    except click.ClickException as exc:
        raise AuditorInputError(f"{where}: {exc.format_message()}") from None


def _line_args(row: dict, where: str) -> list[str]:
    _, by_key = _scan_options()
    args: list[str] = []
    for key, value in row.items():
        if key == "model" or value is None or value == "":
            continue
        p = by_key.get(str(key).strip().lstrip("-").replace("-", "_"))
        if p is None:
            raise AuditorInputError(f"{where}: unknown key {key!r} (keys are `auditor scan` option names without dashes, e.g. data, trigger, scan_param)")
        if p.name in OWNED:
            raise AuditorInputError(f"{where}: {key!r} is set by scan-many itself (each audit's reports go to <output-dir>/<model name>/)")
        if p.is_flag:
            on = value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")
            flags = p.opts if on else p.secondary_opts
            if not flags:
                raise AuditorInputError(f"{where}: {key!r} is a flag with no 'off' form; leave it out instead")
            args.append(flags[0])
            continue
        if p.multiple:  # repeatable options: a JSON list, or values separated by ';'
            values = value if isinstance(value, list) else [v.strip() for v in str(value).split(";") if v.strip()]
        else:
            values = [",".join(map(str, value)) if isinstance(value, list) else value]
        for v in values:
            args += [p.opts[0], json.dumps(v) if isinstance(v, bool) else str(v)]
    return args


def read_manifest(path: Path) -> list[tuple[str, dict]]:
    """(where, row) for each audit of a .jsonl or .csv manifest."""
    rows = []
    try:
        if path.suffix.lower() == ".jsonl":
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise AuditorInputError(f"{path}:{n}: not JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise AuditorInputError(f"{path}:{n}: expected a JSON object with a 'model' key")
                rows.append((f"{path}:{n}", row))
        else:
            with path.open(newline="") as f:
                for n, row in enumerate(csv.DictReader(f), 2):
                    if any(v not in (None, "") for v in row.values()):
                        rows.append((f"{path}:{n}", {k: v for k, v in row.items() if k is not None}))
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditorInputError(f"cannot read manifest {path}: {exc}") from None
    for where, row in rows:
        if not str(row.get("model") or "").strip():
            raise AuditorInputError(f"{where}: no 'model'")
    if not rows:
        raise AuditorInputError(f"manifest {path} lists no audit")
    return rows


def discover(folder: Path) -> list[Path]:
    """The models at the top of folder: model files (not repaired copies) and hub folders (with config.json)."""
    found = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or ".repaired." in p.name:
            continue
        if p.is_dir() and (p / "config.json").is_file():
            found.append(p)
        elif p.is_file() and p.suffix.lower() in MODEL_SUFFIXES:
            found.append(p)
    if not found:
        raise AuditorInputError(f"no model in {folder} (looked for {', '.join(sorted(MODEL_SUFFIXES))} files and folders holding config.json)")
    return found


def plan(source: Path, shared: list[str]) -> list[Audit]:
    """The audits of SOURCE, each with the shared options followed by its own (a manifest's value wins)."""
    shared = _absolute(list(shared), Path.cwd())
    if not any(t == "--config" or t.startswith("--config=") for t in shared) and Path("auditor.toml").is_file():
        shared = ["--config", str(Path("auditor.toml").resolve()), *shared]  # as `scan` would pick it up from the cwd
    if source.is_dir():
        entries = [(m.resolve(), [], f"{source}/{m.name}") for m in discover(source)]
    elif source.is_file() and source.suffix.lower() in (".jsonl", ".csv"):
        base = source.resolve().parent
        entries = [((base / str(row["model"]).strip()).resolve(), _absolute(_line_args(row, where), base), where)
                   for where, row in read_manifest(source)]
    elif source.exists():
        raise AuditorInputError(f"SOURCE must be a folder of models or a .jsonl/.csv manifest, not {source}")
    else:
        raise AuditorInputError(f"SOURCE {source} does not exist")
    audits, names = [], set()
    for model, own, where in entries:
        if not model.exists():
            raise AuditorInputError(f"{where}: model {model} does not exist")
        args = [*shared, *own]
        check_args(model, args, where)
        name, n = model.name, 1
        while name in names:
            n += 1
            name = f"{model.name}-{n}"
        names.add(name)
        audits.append(Audit(model, tuple(args), name, where))
    return audits
