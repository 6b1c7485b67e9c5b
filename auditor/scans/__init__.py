"""Trigger-recovery scans. They measure (masks, patterns, norms, anomaly index) and never judge:
the thresholds that turn numbers into a verdict live in checks/ and the audit config."""

from .neural_cleanse import NeuralCleanseParams, NeuralCleanseResult, neural_cleanse  # noqa: F401
from .generative import GenerativeParams, GenerativeResult, generative_scan  # noqa: F401
from .max_margin import MaxMarginParams, MaxMarginResult, max_margin_scan  # noqa: F401
