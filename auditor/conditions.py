"""A check's pass condition as data: the rule in words, the threshold, the measured value and the
margin, recorded with pytest's record_property so the report's checks table, the JSON and JUnit all
show why a check passed or failed, not only that it did. User checks call it the same way."""

from __future__ import annotations


def record_condition(record_property, condition: str, measured: float, threshold: float, at_most: bool = True,
                     share: bool = False) -> None:
    """`condition` reads as the rule that passes ("clean accuracy >= 80%"); `margin` is how far the
    measured value sits inside the threshold (negative: outside, the check fails). `share`: the numbers
    are fractions of samples, shown as percentages."""
    margin = threshold - measured if at_most else measured - threshold
    if share:
        record_property("unit", "share")
    record_property("condition", condition)
    record_property("measured", round(float(measured), 6))
    record_property("threshold", round(float(threshold), 6))
    record_property("margin", round(float(margin), 6))


def scan_rule(method: str, thresholds) -> str:
    """What flags a class, per scan, with the thresholds in force (mirrors each scan's flagged())."""
    t = thresholds
    nc = f"Neural Cleanse anomaly index >= {t.anomaly_threshold:g} with a mask <= {t.max_mask_ratio:g} x the median"
    rules = {
        "neural-cleanse": nc,
        "generative": (f"sampled patch triggers or a warp reach >= {t.min_generative_asr:.0%} ASR, a blend reaches 80% at "
                       f"<= {t.max_blend_ratio:g} x the other classes' median alpha, or the Neural Cleanse index is >= "
                       f"{t.nc_alone_threshold:g}; or one trigger with a mask <= {t.max_all_to_all_ratio:g} x the per-class median sends >= "
                       f"{t.min_all_to_all_flip:.0%} of held-out samples to several other classes (all-to-all: its destinations)"),
        "max-margin": f"the largest class's maximum margin has p < {t.max_margin_p_value:g} against the others",
    }
    return rules.get(method, "the scan's own rule (see the scan section)")
