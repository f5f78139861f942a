"""Dissection of fine-tuning unlearning: activation patching, parameter restoration, side effects."""

from ..activations import SITES, patch_activations, record_activations
from .probes import Probe, ProbeBatch, encode_probes, make_probes
from .recovery import activation_patching, knowledge_recovery_score, parameter_restoration
from .results import DissectionTable
from .side_effects import side_effects

__all__ = [
    "SITES",
    "DissectionTable",
    "Probe",
    "ProbeBatch",
    "activation_patching",
    "encode_probes",
    "knowledge_recovery_score",
    "make_probes",
    "parameter_restoration",
    "patch_activations",
    "record_activations",
    "side_effects",
]
