"""The model loads and behaves like a classifier: finite logits, the right class count, outputs that
do not depend on batch composition, and the same answers from every backend that runs it."""

import torch

from auditor.conditions import record_condition


def _sample(clean_data, n=256):
    return clean_data.eval.x[:n]


def check_finite_logits(model, clean_data, record_property):
    logits = model.logits(_sample(clean_data))
    bad = (~torch.isfinite(logits)).any(1).sum().item()
    record_condition(record_property, f"no NaN or Inf logits on {len(logits)} samples", bad, 0)
    assert bad == 0, f"{bad} of {len(logits)} samples give NaN or Inf logits"


def check_class_count(model, clean_data, audit_session, record_property):
    labels = int(clean_data.eval.y.max()) + 1
    record_condition(record_property, f"the model has an output for each of the data's {labels} classes",
                     model.num_classes, labels, at_most=False)
    assert model.num_classes >= labels, f"the model has {model.num_classes} outputs, the data has {labels} classes"
    declared = model.info.metadata.get("num_classes")
    if declared is not None:
        assert declared == model.num_classes, f"metadata declares {declared} classes, the model outputs {model.num_classes}"


def check_batch_size_invariance(model, clean_data, audit_config, record_property):
    x = _sample(clean_data, 16)
    batched = model.logits(x)
    single = torch.cat([model.logits(x[i : i + 1]) for i in range(len(x))])
    scale = batched.abs().max().clamp_min(1.0)
    diff = ((batched - single).abs().max() / scale).item()
    record_condition(record_property, f"logits change with batch composition by <= {audit_config.max_logit_diff:g} (relative)",
                     diff, audit_config.max_logit_diff)
    assert diff <= audit_config.max_logit_diff, (
        f"logits change with batch composition by {diff:.2e} (relative) > {audit_config.max_logit_diff:g}"
    )


def _agreement(a, b, audit_config, what):
    scale = a.abs().max().clamp_min(1.0)
    diff = ((a - b).abs().max() / scale).item()
    agree = (a.argmax(1) == b.argmax(1)).float().mean().item()
    assert agree >= 0.999 and diff <= audit_config.max_logit_diff, (
        f"{what} disagree: top-1 agreement {agree:.2%}, max relative logit difference {diff:.2e}"
    )
    return diff


def check_backend_agreement(model, clean_data, audit_config, audit_session, stage, record_property):
    """ONNX: onnxruntime vs the torch conversion the scans use (after: vs the repaired torch module);
    with --paired-model: the two files' outputs."""
    x = _sample(clean_data)
    compared, diffs = [], []
    if model.ort_session is not None:
        ort = model.logits(x, backend="onnxruntime")
        diff = _agreement(ort, model.logits(x, backend="torch"), audit_config, "onnxruntime and the torch conversion")
        compared.append(f"onnxruntime vs onnx2torch: {diff:.1e}")
        diffs.append(diff)
        repaired = getattr(audit_session, "repaired_module_for_parity", None)
        if stage == "after" and repaired is not None:
            torch_out = model.derived(repaired).logits(x, backend="torch")
            diff = _agreement(ort, torch_out, audit_config, "the exported ONNX and the repaired torch model")
            compared.append(f"exported ONNX vs repaired torch: {diff:.1e}")
            diffs.append(diff)
    if stage == "before" and audit_session.paired is not None:
        paired = audit_session.paired
        assert paired.num_classes == model.num_classes, "the paired model has a different class count"
        diff = _agreement(model.logits(x), paired.logits(x), audit_config, f"{model.info.format} and {paired.info.format} files")
        compared.append(f"{model.info.format} vs {paired.info.format}: {diff:.1e}")
        diffs.append(diff)
    if not compared:
        import pytest

        pytest.skip("only one backend to run this model (pass --paired-model to compare PyTorch and ONNX files)")
    record_property("compared", "; ".join(compared))
    record_condition(record_property, f"every backend pair agrees on >= 99.9% of top-1 answers and within "
                     f"{audit_config.max_logit_diff:g} relative logit difference", max(diffs), audit_config.max_logit_diff)
