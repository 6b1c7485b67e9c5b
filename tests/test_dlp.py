"""DLP (`auditor train`): the isolation statistic, determinism, and the command end to end on a small
poisoned set made from the bundled Fashion-MNIST subset; bad data gets one line, exit 2, no files."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import AUDITOR_BIN, CHEAP_SCAN, FMNIST_NPZ

PATCH = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=np.uint8) * 255


def poisoned_npz(path, rate=0.1, target=7, seed=0, n=None):
    """The bundled subset with a BadNets checkerboard pasted on `rate` of it, relabelled `target`."""
    with np.load(FMNIST_NPZ) as d:
        x, y = d["x"].copy(), d["y"].astype(np.int64)
    if n:
        x, y = x[:n], y[:n]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(np.nonzero(y != target)[0], int(rate * len(y)), replace=False)
    x[chosen, 24:27, 24:27] = PATCH
    y[chosen] = target
    poison = np.zeros(len(y), np.uint8)
    poison[chosen] = 1
    np.savez_compressed(path, x=x, y=y, poison=poison)
    return path


def test_isolation_scores_single_out_samples_that_were_learned_suddenly():
    from auditor.dlp import isolation_scores

    gen = torch.Generator().manual_seed(0)
    n = 1000
    # clean samples: losses fall gently from about 1; planted ones start high and collapse
    clean = torch.linspace(1.0, 0.3, 6).unsqueeze(1) * (0.5 + torch.rand(1, n, generator=gen))
    traj = clean.clone()
    planted = torch.arange(0, n, 20)
    traj[:, planted] = torch.tensor([2.0, 1.5, 0.01, 1e-3, 1e-4, 1e-5]).unsqueeze(1)
    labels = torch.randint(10, (n,), generator=gen)
    labels[planted] = 3
    scores = isolation_scores(traj, labels, 10)
    suspects = (scores < -3).nonzero().flatten()
    assert set(suspects.tolist()) == set(planted.tolist())


def test_isolation_finds_a_label_made_mostly_of_planted_samples():
    """At a high poisoning rate the target label's median is itself planted: centring on the label alone
    would hide them; the score against all samples must not."""
    from auditor.dlp import isolation_scores

    gen = torch.Generator().manual_seed(1)
    n = 2000
    traj = torch.linspace(1.0, 0.3, 6).unsqueeze(1) * (0.5 + torch.rand(1, n, generator=gen))
    labels = torch.arange(n) % 10
    planted = torch.nonzero(labels != 3).flatten()[:300]  # 300 planted + 200 clean in label 3
    traj[:, planted] = torch.tensor([2.0, 1.5, 0.01, 1e-3, 1e-4, 1e-5]).unsqueeze(1)
    labels[planted] = 3
    suspects = (isolation_scores(traj, labels, 10) < -3).nonzero().flatten()
    assert set(suspects.tolist()) == set(planted.tolist())


def _tiny_run(seed=0):
    from auditor.data import load_npz
    from auditor.dlp import DLPParams, train_dlp
    from auditor.zoo import small_cnn

    data = load_npz(FMNIST_NPZ)
    data = data.subset(torch.arange(600))
    torch.manual_seed(seed)
    model = small_cnn(in_channels=1, num_classes=10, image_size=28, width=4)
    params = DLPParams(epochs=2, supervised_epochs=1, recordings_per_epoch=2, unlearn_steps=25, unlearn_rounds=1, batch_size=64)
    return train_dlp(model, data, 10, lambda v: model((v - 0.286) / 0.353), params, seed=seed)


def test_same_seed_same_model_bitwise():
    a, b = _tiny_run(), _tiny_run()
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert torch.equal(a.suspects, b.suspects) and torch.equal(a.trajectory, b.trajectory)


def _run(args, cwd, timeout=900):
    return subprocess.run([str(AUDITOR_BIN), "train", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One `auditor train` run: 10% BadNets on 3,000 images, 4 epochs, a cheap scan in its audit."""
    work = tmp_path_factory.mktemp("train")
    data = poisoned_npz(work / "planted.npz")
    before = hashlib.sha256(data.read_bytes()).hexdigest()
    proc = _run([data, "--arch", "auditor.zoo:small_cnn", "--epochs", "4", "--dlp-param", "supervised_epochs=2",
                 "--output-dir", work / "out", "--json", work / "out" / "train.json", *CHEAP_SCAN], cwd=work)
    return work, proc, before


def test_train_writes_a_model_that_scan_loads_without_flags_and_names_suspects(trained):
    work, proc, before = trained
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    result = json.loads((work / "out" / "train.json").read_text())
    out = result["outputs"]
    for kind in ("state_dict", "metadata", "onnx", "validation_data", "html"):
        assert Path(out[kind]).is_file(), kind  # --output-dir is absolute here
    # the audit that set the exit code ran on the written files, loaded from the sidecar with no flags
    assert result["exit_code"] == proc.returncode
    checks = {c["name"]: c["outcome"] for c in result["audit"]["checks"] if c["stage"] == "before"}
    assert checks["check_serialization_safety"] == "passed" and checks["check_clean_accuracy"] in ("passed", "failed")
    assert "error" not in checks.values()
    sus = result["suspects"]
    assert sus["count"] == len(sus["indices"]) and set(sus["named_indices"]) <= set(sus["indices"])
    iso = result["isolation"]  # the npz carries poison flags
    assert iso["planted_in_training_share"] > 200
    assert 0 <= iso["suspects"]["true_positives"] <= iso["suspects"]["selected"]
    assert "DLP" in Path(out["html"]).read_text()
    # the input is never modified
    assert hashlib.sha256((work / "planted.npz").read_bytes()).hexdigest() == before
    assert "verdict:" in proc.stdout


def test_train_report_is_self_contained(trained):
    work, _, _ = trained
    result = json.loads((work / "out" / "train.json").read_text())
    text = Path(result["outputs"]["html"]).read_text()
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org", "")
    assert "<svg" in text and "isolation threshold" in text and "data:image/png;base64," in text


@pytest.mark.parametrize("case, message", [
    ("empty_class", "has no samples"),
    ("negative_label", "labels must be 0 or more"),
    ("too_small", "at least 4 per class"),
    ("poison_shape", "one flag per image"),
    ("bad_arch", "--arch"),
])
def test_bad_data_is_one_line_exit_2_and_nothing_written(tmp_path, case, message):
    x = np.random.default_rng(0).integers(0, 255, (60, 8, 8), dtype=np.uint8)
    y = np.arange(60) % 3
    extra = {}
    arch = "auditor.zoo:small_cnn"
    if case == "empty_class":
        y = np.where(y == 1, 2, y)
    elif case == "negative_label":
        y = y.copy()
        y[0] = -1
    elif case == "too_small":
        y = np.where(np.arange(60) < 2, 3, y)
    elif case == "poison_shape":
        extra["poison"] = np.zeros(5, np.uint8)
    elif case == "bad_arch":
        arch = "no_such_architecture"
    np.savez(tmp_path / "d.npz", x=x, y=y, **extra)
    proc = _run([tmp_path / "d.npz", "--arch", arch, "--output-dir", tmp_path / "out"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("auditor:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_corrupt_image_in_a_folder_is_exit_2(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    (tmp_path / "data" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    proc = _run([tmp_path / "data", "--arch", "auditor.zoo:small_cnn", "--output-dir", tmp_path / "out"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and "broken.png" in proc.stderr
    assert not (tmp_path / "out").exists()
