"""Deprecated: model loading moved to `diffusion_classifier.loading` (shared parts) and `diffusion_classifier.families`.

Kept so that code written against the old layout keeps working; the library does not import it.
"""
from __future__ import annotations

import warnings

from .families import SD_VERSIONS, resolve_sd_model
from .families.dit import DIT_MODELS, ClassConditionalModel, load_class_conditional, resolve_dit_model
from .families.sd import TextConditionalModel, load_text_conditional
from .loading import (
    DTYPES,
    TINY_MODELS,
    default_dtype,
    load_vae,
    one_truncation_warning,
    require_components,
    scheduler_config,
    set_attention,
    tokenize,
)

__all__ = ["SD_VERSIONS", "DIT_MODELS", "DTYPES", "TINY_MODELS", "default_dtype", "resolve_sd_model", "resolve_dit_model",
           "TextConditionalModel", "ClassConditionalModel", "load_text_conditional", "load_class_conditional",
           "load_vae", "one_truncation_warning", "require_components", "scheduler_config", "set_attention", "tokenize"]

warnings.warn("diffusion_classifier.models is deprecated: import from diffusion_classifier.families "
              "(SD_VERSIONS, load_model, families.sd, families.dit) or diffusion_classifier.loading",
              DeprecationWarning, stacklevel=2)
