"""The `auditor` command. Heavy imports (torch) happen inside commands so --help answers at once.

Exit codes: 0 every check passed; 1 a check failed (the gate); 2 usage or input error, or a check
that could not run.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click

from .config import SCAN_PRECISIONS, build_config, with_outputs
from .errors import AuditorInputError


def _floats(text: str | None, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=name) from None


def _input_size(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise click.BadParameter("expected C,H,W such as 3,32,32", param_hint="--input-size")
    return dims


def _key_values(items: tuple[str, ...], option: str) -> dict | None:
    if not items:
        return None
    from json import JSONDecodeError, loads

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise click.BadParameter(f"expected key=value, got {item!r}", param_hint=option)
        try:
            out[key] = loads(value)
        except JSONDecodeError:
            out[key] = value
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="auditor")
def cli():
    """Audit a third-party image classifier before it reaches production.

    Loads the model without running any code from it, runs pytest-style checks (serialization
    safety, loads-and-runs, clean accuracy, backdoor trigger scan), applies an unlearning defense
    plus repair when a backdoor check fails, and writes HTML, JSON and JUnit reports.
    """


path_in = click.Path(exists=False, dir_okay=False, path_type=Path)
model_in = click.Path(exists=False, dir_okay=True, path_type=Path)  # a file, or a hub folder


@contextlib.contextmanager
def errors_exit_2():
    """Input errors and crashes end a command with one line on stderr and exit 2."""
    try:
        yield
    except AuditorInputError as exc:
        click.echo(f"auditor: error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # a crash must still give exit 2 and one readable line
        if os.environ.get("AUDITOR_DEBUG"):
            raise
        click.echo(f"auditor: internal error: {type(exc).__name__}: {exc} (set AUDITOR_DEBUG=1 for a traceback)", err=True)
        sys.exit(2)


@cli.command()
@click.argument("model", type=model_in)
@click.option("--data", help="Clean labelled samples: a folder of class folders, an .npz with x and y, or a bundled set name.  [default: fashion-mnist]")
@click.option("--arch", help="Architecture for a state_dict or safetensors file: a torchvision model name (resnet18) or package.module:callable.")
@click.option("--arch-arg", "arch_args", multiple=True, metavar="KEY=VALUE", help="Keyword argument for --arch, e.g. num_classes=10 (repeatable).")
@click.option("--input-size", help="Model input as C,H,W when the model or its metadata does not say.")
@click.option("--mean", help="Per-channel normalisation mean (comma-separated) when not in the metadata.")
@click.option("--std", help="Per-channel normalisation std (comma-separated) when not in the metadata.")
@click.option("--metadata", type=path_in, help="Metadata JSON (default: <model>.json beside the model, when it is an auditor metadata file).")
@click.option("--paired-model", type=path_in, help="The same model in the other format (PyTorch or ONNX): their outputs must agree.")
@click.option("--reference-model", type=model_in, help="A clean model of the same task you trust: the report says how far each flagged class's recovered triggers also work on it (evidence; the verdict does not change).")
@click.option("--trigger", type=path_in, help="A known trigger spec (JSON): the true ASR is then measured and checked.")
@click.option("--clean-samples", type=click.IntRange(1), help="Clean samples per class the scan, defense and repair may use (the fit split; the rest only evaluates).  [default: 10]")
@click.option("--seed", type=int, help="Seed for splits, scans and defenses.  [default: 0]")
@click.option("--scan", help="Trigger-recovery scan (see `auditor list`).  [default: generative]")
@click.option("--scan-param", "scan_params", multiple=True, metavar="KEY=VALUE", help="Override a scan parameter (repeatable).")
@click.option("--defense", help="Defense applied when a backdoor check fails, or 'none'.  [default: activation-edit]")
@click.option("--defense-param", "defense_params", multiple=True, metavar="KEY=VALUE", help="Override a defense parameter (repeatable).")
@click.option("--repair/--no-repair", default=None, help="Run the repair step after the defense.  [default: repair]")
@click.option("--repair-param", "repair_params", multiple=True, metavar="KEY=VALUE", help="Override a repair parameter (repeatable).")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), help="Clean accuracy a model must reach.  [default: 0.80]")
@click.option("--max-accuracy-drop", type=click.FloatRange(0, 1), help="Clean accuracy the defense may cost.  [default: 0.02]")
@click.option("--max-class-drop", type=click.FloatRange(0, 1), help="Accuracy the defense may cost any one class.  [default: 0.05]")
@click.option("--anomaly-threshold", type=float, help="Anomaly index (MAD index of the log mask norms) above which a class is flagged.  [default: 2.5]")
@click.option("--max-mask-ratio", type=click.FloatRange(0, 1), help="A flagged class's mask must also be at most this share of the median mask.  [default: 0.5]")
@click.option("--min-generative-asr", type=click.FloatRange(0, 1), help="Generative scan: a candidate class is flagged when its sampled triggers reach this ASR.  [default: 0.8]")
@click.option("--nc-alone-threshold", type=float, help="Generative scan: a class whose Neural Cleanse anomaly index exceeds this is flagged even when no sampled patch or warp reaches --min-generative-asr.  [default: 6.0]")
@click.option("--max-all-to-all-ratio", type=click.FloatRange(0, 1), help="Generative scan: one trigger that sends most held-out samples away from their own class, to several classes, with a mask at most this share of the per-class Neural Cleanse median flags the classes it sends them to (an all-to-all backdoor).  [default: 0.3]")
@click.option("--max-blend-ratio", type=click.FloatRange(0, 1), help="Generative scan: a class that an image-wide blend reaches at this share of the alpha the other classes need (median) is flagged.  [default: 0.4]")
@click.option("--max-margin-p", type=click.FloatRange(0, 1), help="Max-margin scan: the class with the largest margin is flagged when its p-value under the other classes' Gamma fit is below this.  [default: 0.05]")
@click.option("--max-asr", type=click.FloatRange(0, 1), help="Highest acceptable ASR with a known trigger.  [default: 0.05]")
@click.option("--gate", type=click.Choice(["before", "after"]), help="Exit code from the delivered model (before) or the repaired one (after).  [default: before]")
@click.option("--checks", "checks_dirs", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="A folder of your own check_*.py files (repeatable).")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), help="Where repaired models go.  [default: reports]")
@click.option("--html", type=path_in, help="HTML report path.  [default: <output-dir>/<model name>.html]")
@click.option("--json", "json_path", type=path_in, help="Write the JSON result here.")
@click.option("--junitxml", type=path_in, help="Write JUnit XML here.")
@click.option("--sarif", type=path_in, help="Write SARIF 2.1.0 here (code-scanning dashboards: one result per failed check).")
@click.option("--cyclonedx", type=path_in, help="Write a CycloneDX ML-BOM (JSON) of the model here, with the audit as evidence.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="auditor.toml, or a pyproject.toml with [tool.auditor].")
@click.option("--max-file-bytes", type=click.IntRange(1), help="Refuse model files larger than this.  [default: 4 GiB]")
@click.option("--device", help="Where scans, defenses and evaluation run: auto (a GPU when torch sees one), cpu, cuda or cuda:N; onnxruntime follows it.  [default: auto]")
@click.option("--scan-precision", type=click.Choice(SCAN_PRECISIONS), help="How scans run the passes that optimise triggers: float32 (exact), bfloat16 in the channels-last layout (2-3x faster where the hardware has bfloat16; a scan's results can differ), or auto (bfloat16 exactly when this CPU or GPU has it in hardware). Predictions a verdict reads stay float32.  [default: float32]")
@click.option("--budget", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS", help="Fit the trigger scans into about this many seconds of wall time by running fewer of their optimisation steps (1/2 or 1/4 of each, priced on this machine before each scan); the report says what was reduced and what that costs in detection. Defense and repair are not shortened.  [default: no budget]")
@click.option("-q", "--quiet", is_flag=True, default=None, help="No progress lines on stderr.")
def scan(model, data, arch, arch_args, input_size, mean, std, metadata, paired_model, reference_model, trigger, clean_samples, seed,
         scan, scan_params, defense, defense_params, repair, repair_params, min_accuracy, max_accuracy_drop, max_class_drop,
         anomaly_threshold, max_mask_ratio, min_generative_asr, nc_alone_threshold, max_blend_ratio, max_all_to_all_ratio, max_margin_p, max_asr, gate, checks_dirs, output_dir, html, json_path, junitxml, sarif, cyclonedx, config_file,
         max_file_bytes, device, scan_precision, budget, quiet):
    """Audit MODEL (.pt/.pth/.bin state_dict, TorchScript, .safetensors, .onnx, or a transformers/timm folder).

    \b
    Exit codes: 0 every check passed, 1 a check failed (the model as delivered,
    or with --gate after the repaired one), 2 usage/input error or a check that could not run.
    """
    cli_values = dict(
        model=model, data=data, arch=arch, arch_kwargs=_key_values(arch_args, "--arch-arg"), input_shape=_input_size(input_size),
        mean=_floats(mean, "--mean"), std=_floats(std, "--std"), metadata=metadata, paired_model=paired_model,
        reference_model=reference_model,
        trigger=trigger, clean_samples=clean_samples, seed=seed, scan=scan, scan_params=_key_values(scan_params, "--scan-param"),
        defense=defense, defense_params=_key_values(defense_params, "--defense-param"), repair=repair,
        repair_params=_key_values(repair_params, "--repair-param"), min_accuracy=min_accuracy,
        max_accuracy_drop=max_accuracy_drop, max_class_drop=max_class_drop, anomaly_threshold=anomaly_threshold, max_mask_ratio=max_mask_ratio, min_generative_asr=min_generative_asr, nc_alone_threshold=nc_alone_threshold, max_blend_ratio=max_blend_ratio, max_all_to_all_ratio=max_all_to_all_ratio, max_margin_p=max_margin_p, max_asr=max_asr, gate=gate,
        checks_dirs=tuple(checks_dirs) or None, output_dir=output_dir, html=html, json=json_path, junitxml=junitxml, sarif=sarif, cyclonedx=cyclonedx,
        max_file_bytes=max_file_bytes, device=device, scan_precision=scan_precision, budget=budget, quiet=quiet,
    )
    with errors_exit_2():
        if config_file is None and Path("auditor.toml").is_file():
            config_file = Path("auditor.toml")
        config = with_outputs(build_config(cli_values, config_file))
        from .runner import run_audit, validate_names

        validate_names(config)
        code, result = run_audit(config)
    print_summary(result, config)
    sys.exit(code)


def print_summary(result: dict, config) -> None:
    for err in result["errors"]:
        click.echo(f"auditor: error: {err}", err=True)
    after = [c for c in result["checks"] if c["stage"] == "after"]
    after_skipped = bool(after) and all(c["outcome"] == "skipped" for c in after) and len({c["message"] for c in after}) == 1
    for c in result["checks"]:
        if after_skipped and c["stage"] == "after":
            continue
        line = f"  {c['outcome'].upper():7} [{c['stage']}] {c['name']}"
        if c["outcome"] == "error" and c["message"] in result["errors"]:
            line += ": could not run (the error above)"
        elif c["message"] and c["outcome"] != "passed":
            line += f": {c['message']}"
        click.echo(line)
    if after_skipped:
        click.echo(f"  SKIPPED [after] every check: {after[0]['message']}")
    m = result["metrics"]
    for stage in ("before", "after"):
        s = m.get(stage)
        if s and "c_acc" in s:
            asr = ""
            if s.get("asr") is not None:
                split = (f"; {s['asr_trigger_flips']:.2%} moved there by it, {s['asr_no_trigger']:.2%} go without it"
                         if s.get("asr_no_trigger") is not None else "")
                asr = f", ASR {s['asr']:.2%} ({s['asr_trigger']} trigger{split})"
            click.echo(f"  {stage}: C-ACC {s['c_acc']:.2%}{asr}")
    outputs = (result.get("defense") or {}).get("outputs") or {}
    for kind, path in outputs.items():
        click.echo(f"  repaired model's metadata: {path}" if kind == "metadata" else f"  repaired model ({kind}): {path}")
    for label, path in (("HTML report", config.html), ("JSON", config.json), ("JUnit XML", config.junitxml),
                        ("SARIF", config.sarif), ("CycloneDX ML-BOM", config.cyclonedx)):
        if path:
            click.echo(f"  {label}: {path}")
    click.echo(f"verdict: {result['verdict'].upper()} (exit {result['exit_code']})")


@cli.command()
@click.argument("data")
@click.option("--arch", required=True, help="Architecture to train: a torchvision name (resnet18), timm:NAME, or package.module:callable (auditor.zoo:small_cnn).")
@click.option("--arch-arg", "arch_args", multiple=True, metavar="KEY=VALUE", help="Keyword argument for --arch (repeatable); num_classes (and in_channels/image_size when the callable takes them) come from the data unless given.")
@click.option("--input-size", help="Train at C,H,W (images are resized; default: the data's own size).")
@click.option("--mean", help="Per-channel normalisation mean (default: measured on the training share).")
@click.option("--std", help="Per-channel normalisation std (default: measured on the training share).")
@click.option("--epochs", type=click.IntRange(1), default=6, show_default=True, help="Epochs in all (DLP's supervised stage plus its semi-supervised stage).")
@click.option("--dlp-param", "dlp_params", multiple=True, metavar="KEY=VALUE", help="Override a DLP parameter (repeatable; see docs/methods.md).")
@click.option("--validation-share", type=float, default=0.1, show_default=True, help="Share of each class held out to measure the trained model.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the split, the initialisation and every random draw.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--name", help="Stem of the files written.  [default: <data name>.dlp]")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports"), show_default=True, help="Where the trained model, its sidecar, ONNX export and reports go.")
@click.option("--html", type=path_in, help="HTML report path.  [default: <output-dir>/<name>.train.html]")
@click.option("--json", "json_path", type=path_in, help="Write the JSON result here.")
@click.option("--junitxml", type=path_in, help="Write the trained model's audit as JUnit XML here.")
@click.option("--scan", help="Trigger-recovery scan of the trained model's audit.  [default: as for auditor scan]")
@click.option("--scan-param", "scan_params", multiple=True, metavar="KEY=VALUE", help="Override a scan parameter of that audit (repeatable).")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
def train(data, arch, arch_args, input_size, mean, std, epochs, dlp_params, validation_share, seed, device, name, output_dir,
          html, json_path, junitxml, scan, scan_params, quiet):
    """Train a model with DLP on DATA, an untrusted labelled data set (a folder of class folders or an
    .npz with x, y), name the samples it finds planted, and audit the result.

    \b
    Exit codes: 0 the trained model passed its audit, 1 a check failed on it,
    2 usage/input error (nothing is written then) or a check that could not run.
    """
    from .training import TrainConfig, run_training, with_train_outputs

    with errors_exit_2():
        config = with_train_outputs(TrainConfig(
            data=data, arch=arch, arch_kwargs=_key_values(arch_args, "--arch-arg") or {}, input_shape=_input_size(input_size),
            mean=_floats(mean, "--mean"), std=_floats(std, "--std"), epochs=epochs, dlp_params=_key_values(dlp_params, "--dlp-param") or {},
            validation_share=validation_share, seed=seed, device=device, name=name, output_dir=output_dir, html=html,
            json=json_path, junitxml=junitxml, scan=scan, scan_params=_key_values(scan_params, "--scan-param") or {}, quiet=quiet,
        ))
        code, summary = run_training(config)
    s = summary["suspects"]
    click.echo(f"  suspects (labels dropped): {s['count']} of {summary['dataset']['training_samples']} training samples; named as planted: {s['named']}")
    iso = summary.get("isolation")
    if iso:
        for key in ("named", "suspects"):
            r = iso[key]
            click.echo(f"  {key} vs the data's poison flags: precision {r['precision'] if r['precision'] is not None else 'n/a'}, recall {r['recall'] if r['recall'] is not None else 'n/a'}")
    click.echo(f"  validation accuracy: {summary['validation']['accuracy']:.2%} ({summary['validation']['note']})")
    for check in summary["audit"]["checks"]:
        if check["outcome"] not in ("passed", "skipped"):
            click.echo(f"  {check['outcome'].upper():7} [{check['stage']}] {check['name']}: {check['message']}")
    for kind, path in summary["outputs"].items():
        click.echo(f"  {kind}: {path}")
    click.echo(f"verdict: {summary['verdict'].upper()} (exit {code})")
    sys.exit(code)


@cli.command(name="scan-many", context_settings={"ignore_unknown_options": True})
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--jobs", type=click.IntRange(1), help="Audits at once (local: worker processes; ray: the cluster's CPUs are shared among this many).  [default: 1; ray: as resources allow]")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True, help="local: subprocesses on this machine; ray: Ray tasks on an embedded cluster, or the one at --ray-address / RAY_ADDRESS.")
@click.option("--ray-address", help="Address of an existing Ray cluster (default: RAY_ADDRESS, else an embedded one).")
@click.option("--cpus-per-audit", type=click.FloatRange(0, min_open=True), help="CPUs (and threads) each audit gets.  [default: cores / --jobs]")
@click.option("--gpus-per-audit", type=click.FloatRange(0), default=0, show_default=True, help="GPUs each Ray task declares (ray only).")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports"), show_default=True, help="Each audit's reports go to <output-dir>/<model name>/; the cache to <output-dir>/.scan-many-cache/.")
@click.option("--html", type=path_in, help="Write the index page (a table of every audit, linking its report) here.")
@click.option("--json", "json_path", type=path_in, help="Write the index JSON (audits, summary) here.")
@click.option("--force", is_flag=True, help="Re-run audits the cache already holds.")
@click.argument("scan_args", nargs=-1, type=click.UNPROCESSED)
def scan_many(source, jobs, executor, ray_address, cpus_per_audit, gpus_per_audit, output_dir, html, json_path, force, scan_args):
    """Audit every model of SOURCE: a folder (its model files and hub folders) or a .jsonl/.csv
    manifest (one audit per line: `model` plus any `auditor scan` option as a key without dashes).
    `auditor scan` options after `--` apply to every audit.

    \b
    Example: auditor scan-many models/ --jobs 2 --json index.json -- --trigger t.json
    Exit codes: 0 every audit passed, 1 any failed, 2 any errored (or bad SOURCE: nothing runs).
    """
    from .many import scan_many as run_many

    with errors_exit_2():
        code = run_many(source, list(scan_args), output_dir, executor=executor, jobs=jobs, cpus_per_audit=cpus_per_audit,
                        gpus_per_audit=gpus_per_audit, ray_address=ray_address, force=force, json_path=json_path, html_path=html)
    sys.exit(code)


@cli.command(name="list")
def list_command():
    """List the registered scans, defenses and built-in checks with their parameters."""
    from . import defenses, scans  # noqa: F401  (registers)
    from .registry import DEFENSES, SCANS
    from .runner import builtin_checks_dir

    for title, registry in (("Scans (--scan)", SCANS), ("Defenses (--defense; 'none' disables)", DEFENSES)):
        click.echo(title)
        for entry in registry.entries():
            click.echo(f"  {entry.name}: {entry.summary}")
            if entry.params:
                click.echo("      " + ", ".join(f"{k}={v}" for k, v in entry.params.items()))
            if entry.limits:
                click.echo(f"      limits: {entry.limits}")
    click.echo("Repair (--repair/--no-repair, --repair-param)")
    from dataclasses import asdict

    from .defenses import RepairParams

    click.echo("      " + ", ".join(f"{k}={v}" for k, v in asdict(RepairParams()).items()))
    click.echo("Built-in checks (add your own with --checks DIR)")
    import ast

    for file in sorted(builtin_checks_dir().glob("check_*.py")):
        tree = ast.parse(file.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("check_"):
                doc = (ast.get_docstring(node) or "").splitlines()
                click.echo(f"  {file.name}::{node.name}" + (f": {doc[0]}" if doc else ""))


def main():
    cli()


if __name__ == "__main__":
    main()
