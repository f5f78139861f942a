"""Concept vectors: locate, validate, audit and ablate the MLP value vectors that store a concept."""

from .ablation import ablate_concept_vector
from .projection import VocabChunk, project_to_vocab, scan_value_vectors, value_vector
from .records import ConceptVector, load_concept_vectors, save_concept_vectors

__all__ = [
    "ConceptVector",
    "VocabChunk",
    "ablate_concept_vector",
    "load_concept_vectors",
    "project_to_vocab",
    "save_concept_vectors",
    "scan_value_vectors",
    "value_vector",
]
