"""Unlearning trainers: one ``XConfig`` + ``XTrainer`` per method, TRL style."""

from .base import UnlearningConfig, UnlearningTrainer
from .dpo import IdkDPOConfig, IdkDPOTrainer
from .gradient_ascent import GradAscentConfig, GradAscentTrainer, GradDiffConfig, GradDiffTrainer
from .needle import NeedleConfig, NeedleTrainer
from .npo import NPOConfig, NPOTrainer, SimNPOConfig, SimNPOTrainer
from .rmu import RMUConfig, RMUTrainer
from .undial import UNDIALConfig, UNDIALTrainer
from .weighted_ascent import SatImpConfig, SatImpTrainer, WGAConfig, WGATrainer

__all__ = [
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
]
