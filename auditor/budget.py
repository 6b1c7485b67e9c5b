"""`--budget SECONDS`: fit the trigger scans into a wall-clock budget by running fewer optimisation steps.

The scans are nearly all of an audit's time on a large model (a CIFAR-stem ResNet-18: about 2,200 s of
scan before and as much after the defense, against about 60 s for everything else on 2 CPU cores), and
their cost is set by their step counts (`*steps` parameters). Before each scan the session prices the
scan's full budget on this machine (`cost.scan_full_budget`) and picks the largest of a few fixed
fractions of every step count whose price fits the stage's share of the budget. Fixed fractions, not a
deadline: the same budget on the same machine gives the same steps, so the numbers repeat, and the
fraction used is recorded so that a run can be repeated exactly with `--scan-param`.

The delivered model's scan gets `BEFORE_SHARE` of the budget (its verdict is the gate's); the repaired
model's scan, when a defense runs, gets what is left after the defense. Defense, repair, evaluation and
reports run at their own settings: the budget does not bound them. What fewer steps cost in detection
is measured over the zoo in docs/benchmarks.md ("Scans under --budget") and said in the report. The
price counts optimisation passes only: the searches' held-out evaluations are not priced and not scaled,
so a scan at a fraction can take longer than its price (the CIFAR-style CNN at 1/4: 95 s against 71 s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# The fractions of every step count a budget may choose, largest first. At 1/8 the generative scan
# missed the BadNets fixture's target (NC index 2.24, its sampled patches 0% ASR); at 1/4 it found it.
FRACTIONS = (1.0, 0.5, 0.25)
BEFORE_SHARE = 0.6  # of the budget, for the delivered model's scan (load and checks before it count against it)
AFTER_RESERVE = 0.1  # of what is left when the repaired model's scan starts: its evaluation and the reports
# What each fraction cost in detection over the zoo (docs/benchmarks.md, "Scans under --budget"):
# said in the report beside the fraction used.
DETECTION_AT = {
    1.0: None,
    0.5: "the same flags as at the full budget on all 12 small zoo models at seed 0 (6 backdoored, 6 clean)",
    0.25: ("every backdoored small zoo model still flagged at its target and no clean one newly flagged (seed 0), "
           "but Bag, which the full budget flags beside the target on 2 of the 6, was not, so the defense does not unlearn it"),
}


# Step counts a budget leaves at full: cheap, and their verdicts need every step. At 1/2 of its 80 steps
# the warp search sent 80% of held-out samples to WaNet's target instead of 92% and the model passed (1/4:
# 52%); with the blend search they are 14% of the generative scan's image passes. The class-scheduling screen
# (many-class heads) decides which classes are searched at all; a shorter screen has not been measured.
KEEP_FULL = frozenset({"warp_steps", "blend_steps", "schedule_screen_steps"})


def step_keys(defaults: dict) -> list[str]:
    """The scan parameters a budget scales: those that count optimisation steps (named `*steps`, switched
    on by default), less `KEEP_FULL`."""
    return [k for k, v in defaults.items() if k.endswith("steps") and k not in KEEP_FULL and isinstance(v, int)
            and not isinstance(v, bool) and v > 0]


def scaled_params(defaults: dict, user_params: dict, fraction: float) -> tuple[dict, dict]:
    """`user_params` with every step count the user did not set scaled by `fraction` (at least 1).
    Returns (the parameters to run with, {key: [full, used]} for each step count reduced)."""
    params, reduced = dict(user_params), {}
    if fraction >= 1:
        return params, reduced
    for key in step_keys(defaults):
        if key in user_params:
            continue  # the user's own setting is never overridden
        used = max(1, math.ceil(defaults[key] * fraction))
        if used < defaults[key]:
            params[key], reduced[key] = used, [defaults[key], used]
    return params, reduced


def fraction_text(fraction: float) -> str:
    return "full" if fraction >= 1 else f"1/{round(1 / fraction)}"


@dataclass
class StagePlan:
    """What the budget chose for one stage's scan."""

    stage: str
    share_seconds: float  # the budget this scan may use
    full_seconds: float  # the scan's full budget priced on this machine
    fraction: float  # of every step count
    planned_seconds: float  # the fraction's optimisation passes priced here (evaluation passes are not priced)
    reduced: dict = field(default_factory=dict)  # {param: [full, used]}
    fits: bool = True  # False: even the smallest fraction is priced over the share

    def summary(self) -> dict:
        return {"stage": self.stage, "share_seconds": round(self.share_seconds, 1), "full_seconds": round(self.full_seconds, 1),
                "fraction": self.fraction, "planned_seconds": round(self.planned_seconds, 1), "reduced": self.reduced,
                "fits": self.fits, "detection": DETECTION_AT.get(self.fraction)}

    def message(self, scan: str) -> str:
        if self.fraction >= 1:
            return (f"budget: the {scan} scan's full budget (about {self.full_seconds:.0f}s here) fits this stage's "
                    f"{self.share_seconds:.0f}s; nothing reduced")
        text = (f"budget: {scan} scan at {fraction_text(self.fraction)} of its optimisation steps (full budget about "
                f"{self.full_seconds:.0f}s here, this stage's share {self.share_seconds:.0f}s, its optimisation passes priced at "
                f"{self.planned_seconds:.0f}s)")
        if not self.fits:
            text += f"; the budget is too small: {fraction_text(FRACTIONS[-1])} is the least this tool runs"
        return text


def plan_stage(stage: str, share_seconds: float, price, defaults: dict, user_params: dict) -> tuple[StagePlan, dict]:
    """The largest fraction whose price (`price(params)`: seconds at that budget on this machine) fits
    `share_seconds`, and the scan parameters it gives; the smallest fraction when none fits."""
    full = price(dict(user_params))
    for fraction in FRACTIONS:
        params, reduced = scaled_params(defaults, user_params, fraction)
        planned = price(params)
        if planned <= share_seconds:
            break
    return StagePlan(stage, share_seconds, full, fraction, planned, reduced, fits=planned <= share_seconds), params
