"""hf_unlearn: unlearning trainers for Hugging Face Transformers.

Example:
    >>> from hf_unlearn import GradAscentTrainer, GradAscentConfig
    >>> GradAscentTrainer(model, GradAscentConfig(max_steps=10), train_dataset=["text to forget"]).train()
"""

from . import losses
from .architectures import ArchitectureAdapter, get_adapter, register_architecture
from .trainers import (
    GradAscentConfig,
    GradAscentTrainer,
    GradDiffConfig,
    GradDiffTrainer,
    IdkDPOConfig,
    IdkDPOTrainer,
    NeedleConfig,
    NeedleTrainer,
    NPOConfig,
    NPOTrainer,
    RMUConfig,
    RMUTrainer,
    SatImpConfig,
    SatImpTrainer,
    SimNPOConfig,
    SimNPOTrainer,
    UNDIALConfig,
    UNDIALTrainer,
    UnlearningConfig,
    UnlearningTrainer,
    WGAConfig,
    WGATrainer,
)

__version__ = "0.1.0"

__all__ = [
    "ArchitectureAdapter",
    "GradAscentConfig",
    "GradAscentTrainer",
    "GradDiffConfig",
    "GradDiffTrainer",
    "IdkDPOConfig",
    "IdkDPOTrainer",
    "NPOConfig",
    "NeedleConfig",
    "NeedleTrainer",
    "NPOTrainer",
    "RMUConfig",
    "RMUTrainer",
    "SatImpConfig",
    "SatImpTrainer",
    "SimNPOConfig",
    "SimNPOTrainer",
    "UNDIALConfig",
    "UNDIALTrainer",
    "UnlearningConfig",
    "UnlearningTrainer",
    "WGAConfig",
    "WGATrainer",
    "get_adapter",
    "losses",
    "register_architecture",
]
