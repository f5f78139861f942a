"""Early exit: a causal LM whose tokens can stop at an internal layer.

Example:
    >>> from hf_unlearn.early_exit import EarlyExitForCausalLM
    >>> model = EarlyExitForCausalLM.from_backbone(causal_lm, exit_strategy="confidence", confidence_threshold=0.9)
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .calibration import calibrate_policy_thresholds, select_checked_exits
from .configuration_early_exit import EXIT_STRATEGIES, EarlyExitConfig
from .evaluation import ExitEvaluation, evaluate_exits
from .modeling_early_exit import (
    EarlyExitCausalLMOutput,
    EarlyExitForCausalLM,
    ExitStatistics,
    LosslessGenerationOutput,
)
from .shortlist import token_shortlist

AutoConfig.register(EarlyExitConfig.model_type, EarlyExitConfig, exist_ok=True)
AutoModelForCausalLM.register(EarlyExitConfig, EarlyExitForCausalLM, exist_ok=True)
# Saved checkpoints carry the two modelling files, so they load where hf_unlearn is not installed.
EarlyExitConfig.register_for_auto_class()
EarlyExitForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "EXIT_STRATEGIES",
    "EarlyExitCausalLMOutput",
    "EarlyExitConfig",
    "EarlyExitForCausalLM",
    "ExitEvaluation",
    "ExitStatistics",
    "LosslessGenerationOutput",
    "calibrate_policy_thresholds",
    "evaluate_exits",
    "select_checked_exits",
    "token_shortlist",
]
