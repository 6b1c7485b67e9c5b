"""Bare state_dicts audited with no --arch: torchvision and timm classifiers identified from their keys
and shapes (auditor/loading/identify.py), ambiguity and near misses answered with the candidates."""

from __future__ import annotations

import json

import pytest
import torch

from auditor.errors import AuditorInputError, UnsafeModelError
from auditor.loading import LoadRequest, load_model
from auditor.loading.identify import INDEX_PATH, build, key_hash
from auditor.zoo import small_cnn


def _saved(tmp_path, net, name="weights.pt"):
    path = tmp_path / name
    torch.save(net.state_dict(), path)
    return path


def _same_logits(handle, net, shape=(3, 32, 32)):
    x = torch.rand(2, *shape)
    with torch.no_grad():
        assert torch.allclose(handle.logits(x), net.eval()(x), atol=1e-5)


def test_torchvision_state_dict_needs_no_arch(tmp_path):
    """resnet18(num_classes=10): timm's resnet18 has the same keys and computes the same outputs with
    them, so the two count as one architecture; timm's resnetblur18 has the same tensors but blurs
    (other outputs): torchvision's architecture is preferred and the alternative named."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    handle = load_model(LoadRequest(_saved(tmp_path, net), input_shape=(3, 32, 32), device="cpu"))
    assert (handle.info.arch, handle.num_classes) == ("resnet18", 10)
    note = next(n for n in handle.info.notes if "identified from the weights" in n)
    assert "torchvision resnet18 with 10 classes" in note and "timm:resnet18 also fit" in note
    assert "timm:resnetblur18 have the same tensors but compute different outputs" in note
    _same_logits(handle, net)


def test_timm_state_dict_needs_no_arch(tmp_path):
    torch.manual_seed(0)
    net = build("timm:resnet10t", num_classes=7)
    handle = load_model(LoadRequest(_saved(tmp_path, net), input_shape=(3, 32, 32), device="cpu"))
    assert (handle.info.arch, handle.num_classes) == ("timm:resnet10t", 7)
    assert any("timm resnet10t with 7 classes" in n for n in handle.info.notes)
    _same_logits(handle, net)


def test_same_keys_different_function_asks_for_arch(tmp_path):
    """efficientnet_b0 and tf_efficientnet_b0 hold the same tensors but pad differently: no guess."""
    torch.manual_seed(0)
    path = _saved(tmp_path, build("timm:efficientnet_b0", num_classes=10))
    with pytest.raises(AuditorInputError, match="compute different outputs") as err:
        load_model(LoadRequest(path, input_shape=(3, 32, 32), device="cpu"))
    assert "timm:efficientnet_b0" in str(err.value) and "timm:tf_efficientnet_b0" in str(err.value)
    assert "\n" not in str(err.value)


def test_near_miss_names_the_closest_architecture(tmp_path):
    import torchvision

    state = torchvision.models.resnet18(num_classes=10).state_dict()
    del state["layer4.1.bn2.num_batches_tracked"]
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    with pytest.raises(AuditorInputError, match=r"fit no torchvision or timm classifier; closest: resnet18 "
                                                 r"\(1 keys missing, 0 extra\).*pass --arch"):
        load_model(LoadRequest(path, input_shape=(3, 32, 32), device="cpu"))


def test_unidentifiable_state_dict_still_asks_for_arch(tmp_path):
    with pytest.raises(AuditorInputError, match="fit no torchvision or timm classifier.*pass --arch"):
        load_model(LoadRequest(_saved(tmp_path, small_cnn()), input_shape=(1, 28, 28), device="cpu"))


def test_index_agrees_with_the_installed_libraries():
    """The shipped index proposes candidates; a stale entry would hide an architecture."""
    index = json.loads(INDEX_PATH.read_text())
    assert len(index["models"]) > 1000
    for spec in ("resnet18", "vit_b_16", "timm:resnet10t", "timm:vit_tiny_patch16_224", "timm:convnext_atto"):
        with torch.device("meta"):
            assert index["models"][spec]["keys"] == key_hash(build(spec).state_dict()), spec


def _with_metadata(tmp_path, arch):
    torch.manual_seed(0)
    net = build("timm:resnet10t", num_classes=10)
    path = _saved(tmp_path, net, "vendor.pt")
    (tmp_path / "vendor.json").write_text(json.dumps({"auditor_metadata": 1, "arch": arch,
                                                        "input": {"channels": 3, "height": 32, "width": 32}}))
    return path, net


def test_metadata_may_name_a_timm_architecture(tmp_path):
    path, net = _with_metadata(tmp_path, {"callable": "timm:resnet10t", "kwargs": {"num_classes": 10}})
    handle = load_model(LoadRequest(path, device="cpu"))
    assert handle.info.arch == "timm:resnet10t"
    _same_logits(handle, net)


@pytest.mark.parametrize("kwargs", [{"pretrained": True}, {"checkpoint_path": "/etc/passwd"}])
def test_timm_arguments_that_read_files_are_refused(tmp_path, kwargs):
    path, _ = _with_metadata(tmp_path, {"callable": "timm:resnet10t", "kwargs": {"num_classes": 10, **kwargs}})
    with pytest.raises(UnsafeModelError, match="refused argument"):
        load_model(LoadRequest(path, device="cpu"))
