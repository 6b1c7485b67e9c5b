"""Model folders as hubs deliver them: transformers and timm, audited with no flags; the repaired
model is a folder the hub library loads as it is."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from auditor.errors import AuditorInputError, UnsafeModelError
from auditor.loading import LoadRequest, load_model
from auditor.loading.safety import inspect_file

from conftest import CHEAP_SCAN, run_auditor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def transformers_folder(folder: Path, **save) -> torch.nn.Module:
    """A tiny transformers ResNet classifier saved as a hub folder (random weights, seed 0)."""
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ResNetConfig(num_labels=4, depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8,
                          id2label={i: f"kind{i}" for i in range(4)}, label2id={f"kind{i}": i for i in range(4)})
    model = ResNetForImageClassification(config).eval()
    model.save_pretrained(str(folder), **save)
    ViTImageProcessor(size={"height": 40, "width": 40}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3]).save_pretrained(str(folder))
    return model


def timm_folder(folder: Path) -> torch.nn.Module:
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5).eval()
    folder.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, str(folder))
    return model


@pytest.mark.parametrize("save", [{}, {"max_shard_size": "20KB"}, {"safe_serialization": False}],
                         ids=["safetensors", "sharded", "pytorch_model.bin"])
def test_transformers_folder_loads_with_no_flags(tmp_path, save):
    model = transformers_folder(tmp_path / "hf", **save)
    handle = load_model(LoadRequest(tmp_path / "hf", device="cpu"))
    info = handle.info
    assert (info.format, info.arch) == ("transformers", "transformers:ResNetForImageClassification")
    assert handle.input_shape == (3, 40, 40) and info.mean == (0.4, 0.5, 0.6) and info.std == (0.2, 0.25, 0.3)
    assert info.metadata["class_names"] == ["kind0", "kind1", "kind2", "kind3"]
    x = torch.rand(3, 3, 40, 40)
    normalised = (x - torch.tensor(info.mean).view(1, 3, 1, 1)) / torch.tensor(info.std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(handle.logits(x), model(pixel_values=normalised).logits, atol=1e-5)


def test_timm_folder_loads_with_no_flags(tmp_path):
    model = timm_folder(tmp_path / "timm")
    handle = load_model(LoadRequest(tmp_path / "timm", device="cpu"))
    assert (handle.info.format, handle.info.arch, handle.num_classes) == ("timm", "timm:resnet10t", 5)
    assert handle.input_shape == tuple(model.pretrained_cfg["input_size"])
    x = torch.rand(2, *handle.input_shape)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (model.pretrained_cfg["mean"], model.pretrained_cfg["std"]))
    with torch.no_grad():
        assert torch.allclose(handle.logits(x), model((x - mean) / std), atol=1e-5)


def test_folder_digest_changes_with_any_file(tmp_path):
    transformers_folder(tmp_path / "hf")
    first = load_model(LoadRequest(tmp_path / "hf", device="cpu")).info.sha256
    (tmp_path / "hf" / "README.md").write_text("notes")
    assert load_model(LoadRequest(tmp_path / "hf", device="cpu")).info.sha256 != first


def test_remote_code_config_is_refused_before_anything_is_imported(tmp_path):
    folder = tmp_path / "hf"
    transformers_folder(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text(f"open({str(tmp_path / 'MARKER')!r}, 'w').close()\n")
    with pytest.raises(UnsafeModelError, match="asks for remote code .auto_map"):
        load_model(LoadRequest(folder, device="cpu"))
    report = inspect_file(folder)
    assert any("remote code" in f for f in report.findings) and any("never imported" in i for i in report.info)
    assert not (tmp_path / "MARKER").exists()


def test_a_link_out_of_the_folder_is_refused(tmp_path):
    folder = tmp_path / "hf"
    transformers_folder(folder)
    (tmp_path / "secret.txt").write_text("secret")
    (folder / "notes.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(AuditorInputError, match="notes.txt links outside the model folder"):
        load_model(LoadRequest(folder, device="cpu"))


def test_repaired_folder_loads_with_from_pretrained(tmp_path):
    """A folder in gives a folder out: configs copied, weights in model.safetensors."""
    from transformers import AutoModelForImageClassification

    from auditor.outputs import write_repaired

    transformers_folder(tmp_path / "hf", safe_serialization=False)
    handle = load_model(LoadRequest(tmp_path / "hf", device="cpu"))
    edited = handle.derived(handle.copy_for_editing())
    with torch.no_grad():
        edited.module.model.classifier[-1].bias.add_(1.0)
    written = write_repaired(edited, handle, tmp_path / "out", protected=(tmp_path / "hf",))
    out = written["folder"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    reloaded = AutoModelForImageClassification.from_pretrained(str(out)).eval()
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(reloaded(pixel_values=x).logits, edited.module(x), atol=1e-5)
    again = load_model(LoadRequest(out, device="cpu"))
    assert again.info.format == "transformers" and again.input_shape == (3, 40, 40)


@pytest.mark.slow
def test_transformers_folder_audits_end_to_end(tmp_path):
    import numpy as np

    transformers_folder(tmp_path / "hf")
    data = tmp_path / "four_kinds.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.integers(0, 255, (80, 40, 40, 3), dtype=np.uint8), y=np.repeat(np.arange(4), 20))
    run = run_auditor(tmp_path, tmp_path / "hf", "--data", str(data), "--min-accuracy", "0", "--defense", "none",
                      *CHEAP_SCAN)
    assert run.returncode in (0, 1), run.stderr
    assert run.data["model"]["format"] == "transformers" and run.data["model"]["input_shape"] == [3, 40, 40]
    checks = {c["name"]: c["outcome"] for c in run.data["checks"] if c["stage"] == "before"}
    assert checks["check_serialization_safety"] == "passed" and checks["check_finite_logits"] == "passed"


HUB = Path(__file__).resolve().parents[1] / "fixtures" / "hub"


@pytest.mark.slow
def test_backdoored_vit_folder_is_flagged_repaired_and_loads_with_from_pretrained(tmp_path):
    """Issue 17's 'done when', on the committed ViT fixture (fixtures/build_hub.py): no flag but --trigger."""
    from transformers import AutoModelForImageClassification

    run = run_auditor(tmp_path, HUB / "vit_badnets", "--trigger", str(HUB / "vit_badnets.trigger.json"))
    assert run.returncode == 1, run.stderr
    data = run.data
    assert data["model"]["format"] == "transformers" and data["model"]["input_shape"] == [1, 28, 28]
    assert 7 in data["scan"]["flagged_classes"]
    before, after = data["metrics"]["before"], data["metrics"]["after"]
    assert before["asr"] > 0.9 and after["asr"] <= 0.05
    assert before["c_acc"] - after["c_acc"] <= 0.02
    folder = Path(data["defense"]["outputs"]["folder"])
    model = AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    assert model(pixel_values=torch.zeros(1, 1, 28, 28)).logits.shape == (1, 10)
    assert run.inputs_unchanged


@pytest.mark.slow
def test_clean_timm_folder_passes(tmp_path):
    run = run_auditor(tmp_path, HUB / "timm_clean")
    assert run.returncode == 0, [c for c in run.data["checks"] if c["outcome"] != "passed"]
    assert run.data["model"]["format"] == "timm" and run.data["model"]["class_names"][7] == "Sneaker"
