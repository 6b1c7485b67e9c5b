"""Unlearning defenses and the repair step. A defense takes a handle and returns a NEW handle; the
input handle's module is never touched (each works on ModelHandle.copy_for_editing())."""

from .base import DefenseOutcome, per_class_fit_accuracy  # noqa: F401
from . import activation_edit, baerase, dhbe, finetune, nc_unlearn  # noqa: F401  (registers the defenses)
from .repair import RepairParams, defense_share, repair  # noqa: F401
from .pipeline import Unlearned, unlearn  # noqa: F401
