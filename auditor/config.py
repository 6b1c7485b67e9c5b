"""The audit's one frozen configuration: defaults < config file (auditor.toml or [tool.auditor]) < CLI."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import AuditorInputError

SCAN_PRECISIONS = ("float32", "auto", "bfloat16")  # --scan-precision; auditor/compute.py


@dataclass(frozen=True)
class AuditConfig:
    model: Path
    data: str = "fashion-mnist"
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    metadata: Path | None = None
    paired_model: Path | None = None
    reference_model: Path | None = None  # a clean model of the same task: evidence in the report, no verdict
    trigger: Path | None = None
    clean_samples: int = 10  # per class: the whole clean-data budget of scan, defense and repair
    seed: int = 0
    scan: str = "generative"  # NC alone false-alarmed on 9 of 18 clean runs (docs/benchmarks.md, "Scans over seeds")
    scan_params: dict[str, Any] = field(default_factory=dict)
    defense: str = "activation-edit"
    defense_params: dict[str, Any] = field(default_factory=dict)
    repair: bool = True
    repair_params: dict[str, Any] = field(default_factory=dict)
    # thresholds: the checks' verdicts, never the scans'
    min_accuracy: float = 0.80
    max_accuracy_drop: float = 0.02
    max_class_drop: float = 0.05
    anomaly_threshold: float = 2.5  # on the log-norm index; docs/methods.md, "Detection statistic"
    max_mask_ratio: float = 0.5
    min_generative_asr: float = 0.8
    nc_alone_threshold: float = 6.0  # generative scan: an NC index this high flags by itself (scans/base.py)
    max_blend_ratio: float = 0.4  # generative scan: a blend reaching a class at this share of the others' alpha flags it
    max_all_to_all_ratio: float = 0.3  # generative scan: an all-to-all trigger this small against the per-class masks flags
    max_margin_p: float = 0.05  # max-margin scan: the top class is flagged below this p-value (MM-BD's own)
    max_asr: float = 0.05
    max_logit_diff: float = 1e-3
    gate: str = "before"
    checks_dirs: tuple[Path, ...] = ()
    output_dir: Path = Path("reports")
    html: Path | None = None
    json: Path | None = None
    junitxml: Path | None = None
    sarif: Path | None = None
    cyclonedx: Path | None = None
    max_file_bytes: int = 4 * 2**30
    device: str = "auto"  # auto | cpu | cuda | cuda:N; checked against the machine when the model loads
    # float32 | auto | bfloat16: how scans run their optimisation passes (auditor/compute.py). Not auto by
    # default: its scan verdicts match float32's over the zoo, but in whole audits it flagged a naturally
    # easy class more often and the repair then cost that class more (docs/benchmarks.md, "Whole default audits")
    scan_precision: str = "float32"
    budget: float | None = None  # seconds: scans run fewer optimisation steps to fit (auditor/budget.py)
    quiet: bool = False

    def __post_init__(self):
        if self.clean_samples < 1:
            raise AuditorInputError("--clean-samples must be at least 1 (per class)")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise AuditorInputError(f"--device {self.device}: expected auto, cpu, cuda or cuda:N")
        if self.scan_precision not in SCAN_PRECISIONS:
            raise AuditorInputError(f"--scan-precision {self.scan_precision}: expected {', '.join(SCAN_PRECISIONS)}")
        if self.budget is not None and not (isinstance(self.budget, (int, float)) and self.budget > 0):
            raise AuditorInputError(f"--budget {self.budget}: expected a positive number of seconds")
        if self.gate not in ("before", "after"):
            raise AuditorInputError("--gate must be 'before' or 'after'")
        for name in ("min_accuracy", "max_accuracy_drop", "max_class_drop", "max_asr", "max_mask_ratio", "min_generative_asr", "max_blend_ratio",
                     "max_all_to_all_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise AuditorInputError(f"{name} must be in [0, 1]")


FILE_KEYS = {f.name for f in fields(AuditConfig)} - {"model", "checks_dirs", "output_dir", "html", "json", "junitxml", "sarif", "cyclonedx"}
PATH_KEYS = {"metadata", "paired_model", "reference_model", "trigger"}


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from auditor.toml (top-level keys or [auditor]) or pyproject.toml ([tool.auditor])."""
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AuditorInputError(f"{path}: cannot read config: {exc}") from None
    table = doc.get("tool", {}).get("auditor") if path.name == "pyproject.toml" else doc.get("auditor", doc)
    if not isinstance(table, dict):
        return {}
    unknown = sorted(set(table) - FILE_KEYS)
    if unknown:
        raise AuditorInputError(f"{path}: unknown settings {', '.join(unknown)} (known: {', '.join(sorted(FILE_KEYS))})")
    out = dict(table)
    for key in PATH_KEYS & set(out):
        out[key] = (path.parent / out[key]).resolve()
    for key in ("input_shape", "mean", "std"):
        if key in out:
            out[key] = tuple(out[key])
    return out


def build_config(cli: dict[str, Any], config_file: Path | None) -> AuditConfig:
    """CLI values of None mean 'not given' and leave file values and defaults in place."""
    settings: dict[str, Any] = {}
    if config_file is not None:
        settings.update(read_config_file(config_file))
    settings.update({k: v for k, v in cli.items() if v is not None})
    for key in ("scan_params", "defense_params", "repair_params"):
        if key in cli and key in settings and isinstance(cli[key], dict):
            settings[key] = {**read_config_file(config_file).get(key, {}), **cli[key]} if config_file else cli[key]
    if str(settings.get("data", "")).lower() == NO_DATA:
        _data_free(settings)
    return AuditConfig(**settings)


NO_DATA = "none"
DATA_FREE_DEFENSES = ("dhbe", "none")  # the defenses that need no clean samples


def _data_free(settings: dict[str, Any]) -> None:
    """--data none: DHBE unless a data-free defense is named, no repair step (it needs clean samples),
    and the Neural Cleanse scan unless another is named."""
    settings["data"] = NO_DATA
    settings.setdefault("defense", "dhbe")
    # on synthesized inputs NC found 3 of 5 zoo targets with no false alarm on 6 clean models, the
    # generative scan 2 of 5 with 2 (docs/benchmarks.md, "Scans on synthesized inputs")
    settings.setdefault("scan", "neural-cleanse")
    if settings["defense"] not in DATA_FREE_DEFENSES:
        raise AuditorInputError(f"--data none: --defense {settings['defense']} needs clean samples; "
                                f"without data only {' or '.join(DATA_FREE_DEFENSES)} run (dhbe is the default here)")
    if settings.get("repair"):
        raise AuditorInputError("--data none: the repair step needs clean samples; leave out --repair")
    settings["repair"] = False


def with_outputs(config: AuditConfig) -> AuditConfig:
    """Fill the default report path: <output_dir>/<model file name>.html."""
    if config.html is None:
        return replace(config, html=config.output_dir / f"{config.model.name}.html")
    return config
