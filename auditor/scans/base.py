"""What every scan result offers the rest of the tool: the session, the backdoor check and the report
use only this protocol, so a new scan is one module registered in SCANS.

Scans measure and never judge: the thresholds that turn their numbers into flagged classes come from
the audit's configuration (`ScanThresholds`), and the verdict is the backdoor check's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    import torch

    from ..triggers import Trigger


@dataclass(frozen=True)
class ScanThresholds:
    anomaly_threshold: float = 2.5  # Neural Cleanse: the log-norm MAD index above which a class is an outlier
    max_mask_ratio: float = 0.5  # ... and its mask must be at most this share of the median mask
    min_generative_asr: float = 0.8  # sampled patches / a warp must send this share of held-out images to the class
    # a Neural Cleanse outlier this strong flags its class whatever the other evidence says: no clean model
    # of the zoo reached 5.5 over seeds 0-2, and a Blended ResNet-18 whose target scored 8.6 passed when
    # only the sampled patches could flag (docs/benchmarks.md, "Scans over seeds")
    nc_alone_threshold: float = 6.0
    max_margin_p_value: float = 0.05  # max-margin scan: the largest class's margin must be this unlikely under the others' fit
    # generative scan's blend search: a class reached by a blend this share of the other classes' median alpha
    # (planted 10-25% blends: 0.1-0.25; the clean classes of every measured model: >= 0.5; docs/benchmarks.md, "Blend search")
    max_blend_ratio: float = 0.4
    # generative scan's all-to-all search: one trigger whose mask is at most this share of the per-class NC median
    # and that sends at least `min_all_to_all_flip` of held-out images to several other classes. The zoo's two
    # all-to-all models scored 0.08-0.185 over seeds 0-2; every clean zoo model 0.91 or more; all-to-one models
    # 0.80 or more but a Blended CIFAR CNN whose target the search was drawn into, 0.37 (docs/benchmarks.md,
    # "All-to-all search"): 0.3 is 1.6x the highest all-to-all score, 1.2x under that Blended one, 3x under any clean one
    max_all_to_all_ratio: float = 0.3
    min_all_to_all_flip: float = 0.5

    @classmethod
    def from_config(cls, config) -> "ScanThresholds":
        return cls(config.anomaly_threshold, config.max_mask_ratio, config.min_generative_asr, config.nc_alone_threshold,
                   config.max_margin_p, config.max_blend_ratio, config.max_all_to_all_ratio)


# A titled group of pictures for the report: (title, [(caption, base64 PNG), ...]).
PictureGroup = tuple[str, list[tuple[str, str]]]


class ScanResult(Protocol):
    method: str  # the registered scan name
    seconds: float

    def summary(self) -> dict:
        """JSON-ready numbers (the report's tables are drawn from these)."""

    def ranking(self) -> list[int]:
        """Every class, most suspicious first, whatever the thresholds."""

    def flagged(self, thresholds: ScanThresholds) -> list[int]:
        """The classes the scan points at under `thresholds`, most suspicious first."""

    def suspects(self, thresholds: ScanThresholds) -> list[int]:
        """Classes the scan does not flag, but whose triggers the defense also unlearns once the model has
        failed: evidence too weak to fail a clean model on, strong enough to act on in a failed one."""

    def triggers(self, cls: int, input_shape: tuple[int, int, int], thresholds: ScanThresholds) -> list["Trigger"]:
        """The recovered stand-ins for class `cls`'s trigger, for the defense to unlearn."""

    def evidence(self, cls: int, thresholds: ScanThresholds, label: str) -> str:
        """One clause for the check's failure message: why `cls` (shown as `label`) is flagged."""

    def describe_class(self, cls: int) -> str:
        """A class's numbers in this scan, for comparing a stage with the other."""

    def pictures(self, classes: list[int], thresholds: ScanThresholds, example: "torch.Tensor",
                 label: Callable[[int], str]) -> list[PictureGroup]:
        """The report's pictures of what was recovered for `classes` (flagged, or the most suspicious one)."""
