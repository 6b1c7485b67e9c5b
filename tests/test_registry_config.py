"""Anomaly index, the scan/defense registries, and the configuration's precedence and validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from auditor.config import AuditConfig, build_config, read_config_file, with_outputs
from auditor.errors import AuditorInputError
from auditor.registry import Registry
from auditor.scans.neural_cleanse import anomaly_index, mad_index


# ----------------------------------------------------------------------------- anomaly index
def test_anomaly_index_flags_one_small_outlier():
    norms = torch.tensor([40.0, 42.0, 38.5, 41.0, 39.0, 43.0, 40.5, 5.0, 39.5, 41.5])
    idx = anomaly_index(norms)
    assert idx.shape == (10,)
    assert idx[7] > 2
    assert int(idx.argmax()) == 7
    assert (idx > 2).sum() == 1


def test_anomaly_index_value():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    # median 3, |dev| = [2,1,0,1,2] -> MAD 1 -> scaled 1.4826
    assert torch.allclose(mad_index(values), (3.0 - values) / 1.4826)
    # the anomaly index is that statistic on the log norms: scale-free
    norms = torch.exp(values)
    assert torch.allclose(anomaly_index(norms), (3.0 - values) / 1.4826, atol=1e-5)
    assert torch.allclose(anomaly_index(norms * 7.0), anomaly_index(norms), atol=1e-5)


def test_anomaly_index_survives_classes_with_huge_masks():
    """Issue 3's failure mode (a), with the Blended zoo model's measured norms: two classes need very
    large masks, which inflates the raw-scale MAD until the real target (class 4) scores under 2."""
    norms = torch.tensor([34.7, 39.1, 50.4, 54.4, 4.4, 162.1, 24.9, 252.3, 15.3, 66.4])
    assert mad_index(norms)[4] < 2  # Neural Cleanse's statistic misses it
    idx = anomaly_index(norms)
    assert int(idx.argmax()) == 4 and idx[4] > 3
    assert (idx > 2.5).sum() == 1


def test_anomaly_index_large_outlier_is_not_flagged():
    norms = torch.tensor([40.0, 42.0, 38.5, 41.0, 39.0, 43.0, 40.5, 400.0, 39.5, 41.5])
    idx = anomaly_index(norms)
    assert idx[7] < -2  # the big side is negative: only small masks are flagged
    assert not (idx > 2).any()


@pytest.mark.parametrize("norms", [[20.0] * 10, [20.0, 20.5, 19.5, 20.2, 19.8, 20.1, 19.9, 20.3, 19.7, 20.4]])
def test_anomaly_index_uniform_norms_flag_nothing(norms):
    idx = anomaly_index(torch.tensor(norms))
    assert torch.isfinite(idx).all()
    assert not (idx > 2).any()


# ----------------------------------------------------------------------------- registry
def test_registry_duplicate_name_raises():
    reg = Registry("scan")
    reg.register("a", "first")(lambda: 1)
    with pytest.raises(ValueError, match="duplicate scan name 'a'"):
        reg.register("a", "second")(lambda: 2)
    assert reg.get("a").summary == "first"


def test_registry_unknown_name_lists_known():
    reg = Registry("defense")
    reg.register("zeta", "z", {"k": 1})(lambda: 1)
    reg.register("alpha", "a")(lambda: 2)
    with pytest.raises(KeyError) as err:
        reg.get("beta")
    message = err.value.args[0]
    assert "unknown defense 'beta'" in message and "alpha, zeta" in message
    assert reg.names() == ["alpha", "zeta"]
    assert [e.name for e in reg.entries()] == ["alpha", "zeta"]
    assert reg.get("zeta").params == {"k": 1}
    with pytest.raises(KeyError, match="none"):
        Registry("scan").get("x")


def test_builtin_registries():
    import auditor.defenses  # noqa: F401
    import auditor.scans  # noqa: F401
    from auditor.registry import DEFENSES, SCANS

    assert "neural-cleanse" in SCANS.names()
    assert {"activation-edit", "baerase", "nc-unlearn", "finetune"} <= set(DEFENSES.names())
    with pytest.raises(KeyError) as err:
        DEFENSES.get("spectral")
    assert "'spectral'" in err.value.args[0]
    assert all(name in err.value.args[0] for name in DEFENSES.names())
    with pytest.raises(ValueError, match="duplicate"):
        SCANS.register("neural-cleanse", "again")(lambda *a: None)


# ----------------------------------------------------------------------------- config
def _cli(**values):
    """CLI values as cli.scan passes them: every option present, None where not given."""
    base = {name: None for name in AuditConfig.__dataclass_fields__}
    base["model"] = Path("m.pt")
    base.update(values)
    return base


def test_defaults_when_nothing_given():
    cfg = build_config(_cli(), None)
    assert cfg.model == Path("m.pt")
    assert cfg.data == "fashion-mnist" and cfg.seed == 0 and cfg.clean_samples == 10
    assert cfg.scan == "generative" and cfg.defense == "activation-edit" and cfg.repair is True
    assert cfg.gate == "before" and cfg.anomaly_threshold == 2.5 and cfg.max_asr == 0.05
    assert cfg.scan_params == {} and cfg.checks_dirs == ()


def test_precedence_defaults_file_cli(tmp_path):
    toml = tmp_path / "auditor.toml"
    toml.write_text(
        'seed = 5\nclean_samples = 20\nmax_asr = 0.1\ntrigger = "trig.json"\n'
        "[scan_params]\nmax_steps = 10\nlr = 0.2\n"
    )
    cfg = build_config(_cli(seed=7, scan_params={"max_steps": 20}), toml)
    assert cfg.seed == 7  # CLI beats file
    assert cfg.clean_samples == 20 and cfg.max_asr == 0.1  # file beats default
    assert cfg.min_accuracy == 0.80  # default kept
    assert cfg.scan_params == {"max_steps": 20, "lr": 0.2}  # merged, CLI key wins
    assert cfg.trigger == (tmp_path / "trig.json").resolve()  # relative to the config file
    cfg2 = build_config(_cli(), toml)
    assert cfg2.seed == 5 and cfg2.scan_params == {"max_steps": 10, "lr": 0.2}


def test_auditor_table_and_pyproject(tmp_path):
    (tmp_path / "auditor.toml").write_text("[auditor]\ngate = \"after\"\ninput_shape = [1, 28, 28]\n")
    cfg = build_config(_cli(), tmp_path / "auditor.toml")
    assert cfg.gate == "after" and cfg.input_shape == (1, 28, 28)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n[tool.auditor]\nseed = 9\n")
    assert build_config(_cli(), tmp_path / "pyproject.toml").seed == 9


def test_unknown_toml_key_rejected(tmp_path):
    toml = tmp_path / "auditor.toml"
    toml.write_text("seed = 1\nseeed = 2\n")
    with pytest.raises(AuditorInputError, match="unknown settings seeed") as err:
        build_config(_cli(), toml)
    assert "auditor.toml" in str(err.value)


@pytest.mark.parametrize("key", ["output_dir", "html", "model"])
def test_output_paths_not_settable_from_file(tmp_path, key):
    toml = tmp_path / "auditor.toml"
    toml.write_text(f'{key} = "x"\n')
    with pytest.raises(AuditorInputError, match=f"unknown settings {key}"):
        read_config_file(toml)


def test_bad_gate_rejected(tmp_path):
    toml = tmp_path / "auditor.toml"
    toml.write_text('gate = "middle"\n')
    with pytest.raises(AuditorInputError, match="gate"):
        build_config(_cli(), toml)
    with pytest.raises(AuditorInputError, match="gate"):
        build_config(_cli(gate="sideways"), None)


@pytest.mark.parametrize("values", [dict(max_asr=1.5), dict(min_accuracy=-0.1), dict(clean_samples=0)])
def test_bad_values_rejected(values):
    with pytest.raises(AuditorInputError):
        build_config(_cli(**values), None)


def test_unreadable_toml(tmp_path):
    toml = tmp_path / "auditor.toml"
    toml.write_text("seed = = 1\n")
    with pytest.raises(AuditorInputError, match="cannot read config"):
        build_config(_cli(), toml)


def test_with_outputs_default_html():
    cfg = with_outputs(build_config(_cli(output_dir=Path("out")), None))
    assert cfg.html == Path("out") / "m.pt.html"
    explicit = with_outputs(build_config(_cli(html=Path("r.html")), None))
    assert explicit.html == Path("r.html")


# ---------------------------------------------------------------- --device


def test_device_auto_and_cpu_resolve_without_a_gpu():
    import torch

    from auditor.model import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.parametrize("spec, says", [("gpu", "expected auto, cpu, cuda or cuda:N"), ("cuda:x", "expected auto"),
                                        ("cuda:99", "CUDA device")])
def test_device_errors_are_one_line_input_errors(spec, says):
    from auditor.model import resolve_device

    with pytest.raises(AuditorInputError, match=says):
        resolve_device(spec)


def test_device_syntax_is_checked_before_anything_loads():
    with pytest.raises(AuditorInputError, match="--device tpu"):
        AuditConfig(model=Path("m.pt"), device="tpu")


def test_cuda_without_a_gpu_exits_2_with_one_line(tmp_path, monkeypatch):
    import torch
    from click.testing import CliRunner

    from auditor.cli import cli
    from conftest import CLEAN_ONNX

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on CI, whatever this machine has
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["scan", str(CLEAN_ONNX), "--device", "cuda", "-q", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == ("auditor: error: --device cuda: torch sees no CUDA device here; "
                                             "use --device cpu or auto")


def test_device_and_onnxruntime_providers_are_recorded(tmp_path):
    from auditor.loading import LoadRequest, load_model
    from conftest import CLEAN_ONNX

    handle = load_model(LoadRequest(CLEAN_ONNX, device="cpu"))
    assert handle.device.type == "cpu" and handle.info.device == "cpu"
    assert handle.info.ort_providers == ("CPUExecutionProvider",)
