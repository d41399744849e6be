"""Deprecated: the per-class protocol moved to `diffusion_classifier.per_class`; the DiT family is `families.dit`.

Kept so that code written against the old layout keeps working; the library does not import it. Run
folder names are built by `diffusion_classifier.runs` (per_class_run, class_adaptive_run).
"""
from __future__ import annotations

import warnings

from .per_class import (
    METRICS,
    SAVE_MODES,
    VB_COLUMNS,
    NullNormalizedScorer,
    candidate_classes,
    class_folders,
    class_to_label,
    l2_map,
    load_per_class_scores,
    make_reducer,
    per_class_accuracy,
    per_class_jobs,
    record_data,
    record_scores,
    run_per_class,
    save_mode,
    schedule_from_alphas_cumprod,
    vb_reducer,
)

__all__ = ["METRICS", "SAVE_MODES", "VB_COLUMNS", "NullNormalizedScorer", "candidate_classes", "class_folders",
           "class_to_label", "l2_map", "load_per_class_scores", "make_reducer", "per_class_accuracy", "per_class_jobs",
           "record_data", "record_scores", "run_per_class", "save_mode", "schedule_from_alphas_cumprod", "vb_reducer"]

warnings.warn("diffusion_classifier.dit is deprecated: import from diffusion_classifier.per_class",
              DeprecationWarning, stacklevel=2)
