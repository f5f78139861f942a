"""Concept vectors: locate, validate, audit and ablate the MLP value vectors that store a concept."""

from .ablation import ablate_concept_vector
from .audit import ENGLISH_STOPWORDS, AuditTable, audit_concept_vectors
from .behaviour import UnicodeWordTokenizer, answer_questions, bleu, rouge_l, text_overlap
from .jailbreak import (
    JAILBREAK_FAMILIES,
    SAFETY_SYSTEM_PROMPT,
    grandmother_prompt,
    in_context_prompt,
    jailbreak_prompts,
    load_translated_questions,
    role_play_prompt,
    translated_questions,
)
from .locate import (
    ConceptScores,
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
from .validation import AnswerComparison, ValidationResult, validate_concept_vector

__all__ = [
    "AnswerComparison",
    "AuditTable",
    "ConceptScores",
    "ConceptVector",
    "ENGLISH_STOPWORDS",
    "JAILBREAK_FAMILIES",
    "SAFETY_SYSTEM_PROMPT",
    "UnicodeWordTokenizer",
    "ValidationResult",
    "VocabChunk",
    "ablate_concept_vector",
    "answer_questions",
    "attribution_scores",
    "audit_concept_vectors",
    "bleu",
    "characteristic_tokens",
    "contrastive_scores",
    "grandmother_prompt",
    "in_context_prompt",
    "jailbreak_prompts",
    "load_concept_vectors",
    "load_translated_questions",
    "locate_concept_vectors",
    "project_to_vocab",
    "role_play_prompt",
    "rouge_l",
    "save_concept_vectors",
    "scan_value_vectors",
    "score_value_vectors",
    "text_overlap",
    "token_prior",
    "translated_questions",
    "validate_concept_vector",
    "value_vector",
    "vocab_scores",
]
