"""diffusion-classifier: pretrained diffusion models as classifiers (Li et al., ICCV 2023)."""
from .schedules.staged import adaptive_classify, reference_stages
from .classifier import DiffusionClassifier, Prediction, probabilities
from .engine import Jobs, Scorer, denoising_error
from .families.dit import load_class_conditional
from .families.sd import load_text_conditional
from .schedules.statistical import statistical_classify

__version__ = "0.1.0"
__all__ = ["DiffusionClassifier", "Prediction", "probabilities", "Scorer", "Jobs", "denoising_error",
           "adaptive_classify", "reference_stages", "statistical_classify", "load_text_conditional",
           "load_class_conditional"]
