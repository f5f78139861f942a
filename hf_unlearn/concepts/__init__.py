"""Concept vectors: locate, validate, audit and ablate the MLP value vectors that store a concept."""

from .ablation import ablate_concept_vector, ablate_concept_vectors
from .audit import ENGLISH_STOPWORDS, AuditTable, audit_concept_vectors
from .locate import (
    ConceptScores,
    LocateOptions,
    attribution_scores,
    characteristic_tokens,
    contrastive_scores,
    locate_concept_vectors,
    score_value_vectors,
    token_prior,
    vocab_scores,
)
from .projection import VocabChunk, project_to_vocab, scan_value_vectors, value_vector
from .records import ConceptVector, load_concept_vectors, save_concept_vectors
from .set_size import SetSizeTrial, choose_set_size, pick_set_size
from .validation import AnswerComparison, ValidationResult, validate_concept_vector, validate_concept_vectors

__all__ = [
    "AnswerComparison",
    "AuditTable",
    "ConceptScores",
    "ConceptVector",
    "LocateOptions",
    "ENGLISH_STOPWORDS",
    "ValidationResult",
    "SetSizeTrial",
    "VocabChunk",
    "ablate_concept_vector",
    "ablate_concept_vectors",
    "attribution_scores",
    "audit_concept_vectors",
    "characteristic_tokens",
    "choose_set_size",
    "contrastive_scores",
    "load_concept_vectors",
    "locate_concept_vectors",
    "pick_set_size",
    "project_to_vocab",
    "save_concept_vectors",
    "scan_value_vectors",
    "score_value_vectors",
    "token_prior",
    "validate_concept_vector",
    "validate_concept_vectors",
    "value_vector",
    "vocab_scores",
]
