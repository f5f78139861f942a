"""``ConceptVector`` records and the ConceptVectors JSON format (Hong et al., CC BY 4.0 benchmark)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic_files import atomic_write_text


@dataclass
class ConceptVector:
    """One concept vector: value vector ``dim`` of layer ``layer``'s MLP output projection, and its test data.

    Field names are pythonic; :func:`load_concept_vectors` / :func:`save_concept_vectors` map them to the released
    JSON keys (``Concept``, ``Layer``, ``Dim``, ``QA``, ``text_completion``, ``unrelated_QA``,
    ``wikipedia_content``, ``id``/``ID``, ``QA_with_answers``, ``answers_tokens_num``).

    Example:
        >>> vectors = load_concept_vectors("llama2-7b_concepts_dev.json")
        >>> vectors[0].concept, vectors[0].layer, vectors[0].dim
    """

    concept: str
    layer: int
    dim: int
    questions: list[str] = field(default_factory=list)
    text_completions: list[dict[str, str]] = field(default_factory=list)
    unrelated_questions: list[str] = field(default_factory=list)
    source_text: str = ""
    id: int | None = None
    answers: list[str] | None = None
    qa_with_answers: list[str] | None = None
    answers_tokens_num: list[int] | None = None
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def location(self) -> tuple[int, int]:
        return self.layer, self.dim

    @classmethod
    def from_json(cls, obj: dict[str, Any], position: int | None = None) -> ConceptVector:
        """Parse one released record; ``Layer``/``Dim``/``id`` may be numeric strings, the id may be absent."""
        where = f"record {position}" if position is not None else "record"
        missing = [key for key in ("Concept", "Layer", "Dim") if key not in obj]
        if missing:
            raise ValueError(f"{where} lacks {missing}; a concept vector record needs 'Concept', 'Layer' and 'Dim'")
        raw_id = obj.get("id", obj.get("ID"))
        try:
            layer, dim = int(obj["Layer"]), int(obj["Dim"])
            record_id = int(raw_id) if raw_id not in (None, "") else None
        except (TypeError, ValueError) as error:
            name = obj.get('Concept')
            raise ValueError(f"{where} ({name!r}): Layer, Dim and id must be integers: {error}") from None
        return cls(
            concept=obj["Concept"],
            layer=layer,
            dim=dim,
            questions=list(obj.get("QA") or []),
            text_completions=list(obj.get("text_completion") or []),
            unrelated_questions=list(obj.get("unrelated_QA") or []),
            source_text=obj.get("wikipedia_content") or "",
            id=record_id,
            answers=obj.get("answers"),
            qa_with_answers=obj.get("QA_with_answers"),
            answers_tokens_num=obj.get("answers_tokens_num"),
            scores=dict(obj.get("scores") or {}),
        )

    def to_json(self) -> dict[str, Any]:
        """The record in the released schema (optional fields only when set)."""
        out: dict[str, Any] = {
            "Concept": self.concept,
            "Layer": self.layer,
            "Dim": self.dim,
            "QA": self.questions,
            "text_completion": self.text_completions,
            "unrelated_QA": self.unrelated_questions,
            "wikipedia_content": self.source_text,
        }
        optional = {
            "id": self.id,
            "answers": self.answers,
            "QA_with_answers": self.qa_with_answers,
            "answers_tokens_num": self.answers_tokens_num,
            "scores": self.scores or None,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_concept_vectors(path_or_hub_id: str | os.PathLike, split: str = "train") -> list[ConceptVector]:
    """Read concept vectors from a released JSON file (a list of records) or a Hub dataset id.

    Example:
        >>> vectors = load_concept_vectors("llama2-7b_concepts_dev.json")
        >>> [(v.concept, v.layer, v.dim) for v in vectors]
    """
    path = Path(path_or_hub_id)
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a JSON list of concept records, found a {type(data).__name__}")
        rows = data
    elif path.suffix == ".json" or str(path_or_hub_id).startswith((".", "/", "~")):
        raise FileNotFoundError(f"no concept-vector file at {path}")
    else:
        from datasets import load_dataset

        rows = list(load_dataset(str(path_or_hub_id), split=split))
    return [ConceptVector.from_json(row, i) for i, row in enumerate(rows)]


def save_concept_vectors(vectors: list[ConceptVector], path: str | os.PathLike) -> None:
    """Write ``vectors`` in the released JSON schema, atomically (a crash never leaves a half-written file)."""
    atomic_write_text(path, json.dumps([v.to_json() for v in vectors], ensure_ascii=False, indent=1))
