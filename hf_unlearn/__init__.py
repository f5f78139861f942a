"""hf_unlearn: unlearning trainers, unlearning audits and early exit for Hugging Face Transformers.

Example:
    >>> from hf_unlearn import GradAscentTrainer, GradAscentConfig
    >>> GradAscentTrainer(model, GradAscentConfig(max_steps=10), train_dataset=["text to forget"]).train()
"""

from . import losses
from .architectures import ArchitectureAdapter, get_adapter, register_architecture
from .concepts import (
    ConceptVector,
    ablate_concept_vector,
    audit_concept_vectors,
    load_concept_vectors,
    locate_concept_vectors,
    validate_concept_vector,
)
from .dissect import activation_patching, knowledge_recovery_score, parameter_restoration
from .early_exit import EarlyExitConfig, EarlyExitForCausalLM, evaluate_exits
from .evaluation import (
    QASet,
    UnlearningEvaluation,
    UnlearningEvaluationCallback,
    answer_log_probs,
    evaluate_unlearning,
)
from .methods import METHODS, MethodSpec, get_method
from .recipes import ConceptUnlearningResult, unlearn_concept
from .trainers import (
    ConsistentEEConfig,
    ConsistentEETrainer,
    EarlyExitTrainer,
    EarlyExitTrainingConfig,
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
    add_memorized_layers,
)

__version__ = "0.1.0"

__all__ = [
    "ArchitectureAdapter",
    "ConceptUnlearningResult",
    "ConceptVector",
    "ConsistentEEConfig",
    "ConsistentEETrainer",
    "EarlyExitConfig",
    "EarlyExitForCausalLM",
    "EarlyExitTrainer",
    "EarlyExitTrainingConfig",
    "GradAscentConfig",
    "GradAscentTrainer",
    "GradDiffConfig",
    "GradDiffTrainer",
    "IdkDPOConfig",
    "IdkDPOTrainer",
    "METHODS",
    "MethodSpec",
    "NPOConfig",
    "NPOTrainer",
    "NeedleConfig",
    "NeedleTrainer",
    "QASet",
    "RMUConfig",
    "RMUTrainer",
    "SatImpConfig",
    "SatImpTrainer",
    "SimNPOConfig",
    "SimNPOTrainer",
    "UNDIALConfig",
    "UNDIALTrainer",
    "UnlearningConfig",
    "UnlearningEvaluation",
    "UnlearningEvaluationCallback",
    "UnlearningTrainer",
    "WGAConfig",
    "WGATrainer",
    "ablate_concept_vector",
    "activation_patching",
    "add_memorized_layers",
    "answer_log_probs",
    "audit_concept_vectors",
    "evaluate_exits",
    "evaluate_unlearning",
    "get_adapter",
    "get_method",
    "knowledge_recovery_score",
    "load_concept_vectors",
    "locate_concept_vectors",
    "losses",
    "parameter_restoration",
    "register_architecture",
    "unlearn_concept",
    "validate_concept_vector",
]
