"""The scan cost said before a scan starts: counted from the scan's parameters, timed on the model."""

from __future__ import annotations


def test_image_passes_follow_the_parameters():
    from auditor.scans.generative import GenerativeScanParams
    from auditor.scans.max_margin import MaxMarginParams
    from auditor.scans.neural_cleanse import NeuralCleanseParams

    assert NeuralCleanseParams(max_steps=10, batch_size=4).image_passes(10) == 400
    generative = GenerativeScanParams(nc_max_steps=10, nc_batch_size=4, candidates=2, steps=5, batch_size=8, warp_steps=3,
                                      warp_batch_size=2, blend_steps=4, blend_batch_size=3, all_to_all_steps=7,
                                      all_to_all_batch_size=5, margin_starts=2, margin_steps=6)
    # the blend search's bound: every rung of its alpha ladder run for every class; the all-to-all search: one trigger;
    # MM-BD (run only when a blend ratio calls for it): every class's starts for every step
    assert generative.image_passes(10) == 400 + 2 * 5 * 8 + 3 * 10 * 2 + 9 * 4 * 10 * 3 + 7 * 5 + 10 * 2 * 6
    assert GenerativeScanParams(margin_blend_ratio=0).image_passes(10) < GenerativeScanParams().image_passes(10)
    assert GenerativeScanParams(candidates=50).image_passes(3) < GenerativeScanParams(candidates=50).image_passes(4)
    assert MaxMarginParams(starts=2, steps=3, nc_max_steps=5).image_passes(10) == 60 + 5 * 24


def test_estimate_is_measured_on_the_model_and_leaves_it_as_it_was(badnets_handle):
    from auditor.cost import scan_full_budget
    from auditor.registry import SCANS
    import auditor.scans  # noqa: F401

    flags = [p.requires_grad for p in badnets_handle.module.parameters()]
    bound = scan_full_budget(SCANS.get("generative").params_type, {"nc_max_steps": 10}, badnets_handle)
    assert bound["images_per_second"] > 0 and bound["image_passes"] < 166_400
    assert abs(bound["seconds"] - bound["image_passes"] / bound["images_per_second"]) < 1e-6
    assert [p.requires_grad for p in badnets_handle.module.parameters()] == flags
    assert scan_full_budget(None, {}, badnets_handle) is None  # a scan that does not count its passes: nothing said
