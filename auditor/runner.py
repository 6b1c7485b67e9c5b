"""Run one audit: prepare the session, one in-process pytest session over the check folders
(before and after stages together, so one HTML report holds both), then JSON and the exit code."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from .config import AuditConfig
from .report.result import EXIT_ERROR

BUILTIN_CHECKS = Path(__file__).resolve().parents[1] / "checks"


def builtin_checks_dir() -> Path:
    if BUILTIN_CHECKS.is_dir():
        return BUILTIN_CHECKS
    import auditor.checks  # installed wheel: checks/ ships as auditor.checks

    return Path(auditor.checks.__file__).parent


def pytest_args(config: AuditConfig, check_dirs: list[Path]) -> list[str]:
    args = [str(d) for d in check_dirs]
    args += [
        "-c", os.devnull, "--rootdir", str(check_dirs[0]), "--import-mode=importlib",
        "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:xdist",
        "-o", "python_files=check_*.py", "-o", "python_functions=check_*", "-o", "python_classes=Check",
        "-o", "console_output_style=classic", "-q", "--tb=no", "-rN", "--no-header",
        "-W", "ignore::DeprecationWarning", "-W", "ignore::UserWarning",
    ]
    if config.html:
        args += ["--html", str(config.html), "--self-contained-html",
                 "--css", str(Path(__file__).parent / "report" / "report.css"), "-o", "render_collapsed=all"]
    if config.junitxml:
        args += ["--junitxml", str(config.junitxml), "-o", "junit_suite_name=auditor", "-o", "junit_family=xunit2"]
    return args


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:  # the pictures are the HTML report's; the JSON keeps the numbers
        json.dump({k: v for k, v in result.items() if k != "pictures"}, fh, indent=1, default=str)
        fh.write("\n")
    os.replace(tmp, path)


def run_audit(config: AuditConfig, progress=None) -> tuple[int, dict]:
    import pytest

    from .plugin import AuditPlugin
    from .session import AuditSession

    sidecar = Path(config.model).with_suffix(".json")  # read as the model's metadata when no --metadata is given
    for out in (config.html, config.json, config.junitxml, config.sarif, config.cyclonedx):
        if out is not None:
            for source in (config.model, config.paired_model, config.trigger, config.metadata, config.reference_model,
                           sidecar if sidecar.is_file() else None):
                if source is not None and Path(out).resolve() == Path(source).resolve():
                    from .errors import AuditorInputError

                    raise AuditorInputError(f"{out}: refusing to write a report over an input file")
    session = AuditSession(config, progress)
    session.prepare()
    plugin = AuditPlugin(session)
    check_dirs = [builtin_checks_dir(), *config.checks_dirs]
    if config.html:
        Path(config.html).parent.mkdir(parents=True, exist_ok=True)
    session.progress(f"running checks from {', '.join(str(d) for d in check_dirs)}")
    # pytest's own terminal output goes to stderr (nowhere with --quiet) so stdout carries only
    # auditor's summary.
    sink = open(os.devnull, "w") if config.quiet else contextlib.nullcontext(sys.stderr)
    with sink as stream, contextlib.redirect_stdout(stream):
        status = int(pytest.main(pytest_args(config, check_dirs), plugins=[plugin]))
    result = plugin.finalise(status)
    if status not in (0, 1) and result["exit_code"] != EXIT_ERROR:
        result.update(verdict="error", exit_code=EXIT_ERROR)
        result["errors"].append(f"pytest ended with exit status {status}")
    if config.html and Path(config.html).is_file():
        from .report.html import finish_html

        finish_html(Path(config.html), result)
    if config.json:
        write_json(Path(config.json), result)
    if config.sarif:
        from .report.sarif import write_sarif

        write_sarif(Path(config.sarif), result)
    if config.cyclonedx:
        from .report.mlbom import write_cyclonedx

        write_cyclonedx(Path(config.cyclonedx), result)
    return result["exit_code"], result


def validate_names(config: AuditConfig) -> None:
    """Unknown scan or defense names are usage errors, caught before any work starts."""
    from . import defenses, scans  # noqa: F401  (registers)
    from .errors import AuditorInputError
    from .registry import DEFENSES, SCANS

    try:
        SCANS.get(config.scan)
        if config.defense != "none":
            DEFENSES.get(config.defense)
    except KeyError as exc:
        raise AuditorInputError(exc.args[0]) from None
    for name, registry, params in ((config.scan, SCANS, config.scan_params),
                                   (config.defense, DEFENSES, config.defense_params)):
        if name == "none":
            continue
        unknown = set(params) - set(registry.get(name).params) - {"seed"}
        if unknown:
            raise AuditorInputError(f"{name}: unknown parameters {', '.join(sorted(unknown))} "
                                    f"(known: {', '.join(registry.get(name).params)})")
        if registry.get(name).params_type is not None:
            _check_values(name, registry.get(name).params_type, params)
    from dataclasses import fields

    from .defenses import RepairParams

    unknown = set(config.repair_params) - {f.name for f in fields(RepairParams)}
    if unknown:
        raise AuditorInputError(f"repair: unknown parameters {', '.join(sorted(unknown))}")
    _check_values("repair", RepairParams, config.repair_params)


def _check_values(name: str, params_type: type, params: dict) -> None:
    """Bad values fail now, not minutes later when the scan, defense or repair runs."""
    from .errors import AuditorInputError

    try:
        params_type(**params)
    except ValueError as exc:  # the parameter classes' messages name their scan, defense or repair
        raise AuditorInputError(str(exc)) from None
    except TypeError as exc:
        raise AuditorInputError(f"{name}: {exc}") from None
