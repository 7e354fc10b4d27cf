"""epic_kernels: exact, fast EPIC (entropy-aligned) decoding for language models.

``import epic_kernels`` never needs the compiled extension; it is loaded on first use.
"""
from .api import StepOutput, sample_step
from .cache import EpicCache
from .calibration import calibrate_alpha
from .core import EpicConfig, SampleResult, StepStats
from .entropy import lookahead_entropy
from .generation import GenerationOutput, generate
from .truncation import truncate

__version__ = "0.1.0"

__all__ = ["sample_step", "StepOutput", "generate", "GenerationOutput", "lookahead_entropy", "calibrate_alpha",
           "EpicCache", "EpicConfig", "SampleResult", "StepStats", "truncate", "__version__"]
