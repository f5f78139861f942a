"""hf_unlearn's trainers: one ``XConfig`` + ``XTrainer`` per method, TRL style."""

from .base import BaseConfig, BaseTrainer
from .consistentee import ConsistentEEConfig, ConsistentEETrainer, add_memorized_layers
from .dpo import IdkDPOConfig, IdkDPOTrainer
from .early_exit import EarlyExitTrainer, EarlyExitTrainingConfig
from .gradient_ascent import GradAscentConfig, GradAscentTrainer, GradDiffConfig, GradDiffTrainer
from .needle import NeedleConfig, NeedleTrainer
from .npo import NPOConfig, NPOTrainer, SimNPOConfig, SimNPOTrainer
from .rmu import RMUConfig, RMUTrainer
from .undial import UNDIALConfig, UNDIALTrainer
from .unlearning import UnlearningConfig, UnlearningTrainer
from .weighted_ascent import SatImpConfig, SatImpTrainer, WGAConfig, WGATrainer

__all__ = [
    "BaseConfig",
    "BaseTrainer",
    "ConsistentEEConfig",
    "ConsistentEETrainer",
    "EarlyExitTrainer",
    "EarlyExitTrainingConfig",
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
    "add_memorized_layers",
]
