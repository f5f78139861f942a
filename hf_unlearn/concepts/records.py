"""``ConceptVector`` records and the ConceptVectors JSON format (Hong et al., CC BY 4.0 benchmark)."""

from __future__ import annotations

import json
import numbers
import operator
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from numbers import Integral
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

    def __post_init__(self):
        # One rule everywhere a concept vector is used: layers and dims count from 0 (a negative index would
        # silently count from the end in some code paths and be refused in others).
        for name in ("layer", "dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"ConceptVector({self.concept!r}).{name}={value!r}: give a non-negative integer")

    @classmethod
    def from_json(cls, obj: Any, position: int | None = None) -> ConceptVector:
        """Parse one released record; ``Layer``/``Dim``/``id`` may be decimal strings, the id may be absent.
        Every field is checked: a wrong type is a ValueError naming the record and the field."""
        where = f"record {position}" if position is not None else "record"
        if not isinstance(obj, dict):
            raise ValueError(f"{where} is a {type(obj).__name__}; a concept vector record is a JSON object")
        missing = [key for key in ("Concept", "Layer", "Dim") if key not in obj]
        if missing:
            raise ValueError(f"{where} lacks {missing}; a concept vector record needs 'Concept', 'Layer' and 'Dim'")
        concept = obj["Concept"]
        if not isinstance(concept, str) or not concept.strip():
            raise ValueError(f"{where}: 'Concept' must be a non-empty string, got {concept!r}")
        where = f"{where} ({concept!r})"
        raw_id = obj.get("id", obj.get("ID"))
        return cls(
            concept=concept,
            layer=_index(obj["Layer"], where, "Layer"),
            dim=_index(obj["Dim"], where, "Dim"),
            questions=_strings(obj.get("QA"), where, "QA"),
            text_completions=_completions(obj.get("text_completion"), where),
            unrelated_questions=_strings(obj.get("unrelated_QA"), where, "unrelated_QA"),
            source_text=_string(obj.get("wikipedia_content"), where, "wikipedia_content"),
            id=_index(raw_id, where, "id") if raw_id not in (None, "") else None,
            answers=_strings(obj["answers"], where, "answers") if obj.get("answers") is not None else None,
            qa_with_answers=(_strings(obj["QA_with_answers"], where, "QA_with_answers")
                             if obj.get("QA_with_answers") is not None else None),
            answers_tokens_num=([_index(n, where, "answers_tokens_num") for n in _list(obj["answers_tokens_num"],
                                                                                          where, "answers_tokens_num")]
                                if obj.get("answers_tokens_num") is not None else None),
            scores=_scores(obj.get("scores"), where),
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


_MAX_INDEX = 10**7  # far above any model's layer count or MLP width; larger is a corrupt file, not a model


def _index(value: Any, where: str, name: str) -> int:
    """A non-negative integer, or a string of ASCII digits (the released files have both). Not a bool, not 1.9."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_INDEX:
        raise ValueError(f"{where}: {name!r} must be a non-negative integer (or a string of digits), got {value!r}")
    return value


def _list(value: Any, where: str, name: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{where}: {name!r} must be a list, got a {type(value).__name__} ({value!r:.60})")
    return value


def _string(value: Any, where: str, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: {name!r} must be a string, got a {type(value).__name__}")
    return value


def _strings(value: Any, where: str, name: str) -> list[str]:
    if value is None:
        return []
    items = _list(value, where, name)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ValueError(f"{where}: {name}[{i}] must be a string, got a {type(item).__name__}")
    return list(items)


def _completions(value: Any, where: str) -> list[dict[str, str]]:
    if value is None:
        return []
    items = _list(value, where, "text_completion")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in item.items()):
            raise ValueError(f"{where}: text_completion[{i}] must be an object of strings, got {item!r:.60}")
    return [dict(item) for item in items]


def _scores(value: Any, where: str) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: 'scores' must be an object of numbers, got a {type(value).__name__}")
    out = {}
    for key, score in value.items():
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise ValueError(f"{where}: scores[{key!r}] must be a number, got {score!r:.40}")
        out[str(key)] = float(score)
    return out


def _looks_local(path: Path, text: str) -> bool:
    """A path that cannot be a Hub dataset id (``owner/name``) or whose folder exists here."""
    return (
        bool(path.suffix)
        or text.startswith((".", "/", "~"))
        or text.count("/") != 1
        or path.parent.is_dir() and str(path.parent) not in ("", ".")
    )


VectorRef = ConceptVector | tuple[int, int]


def _checked_pair(pair: Sequence[Integral]) -> tuple[int, int]:
    layer, dim = int(pair[0]), int(pair[1])
    if layer < 0 or dim < 0:
        raise ValueError(f"concept vector location {tuple(pair)}: layer and dim count from 0 (no negative indices)")
    return layer, dim


def as_vector_refs(vectors: VectorRef | Iterable[VectorRef]) -> list[VectorRef]:
    """Normalise one ``ConceptVector``, one ``(layer, dim)`` or an iterable of them to a non-empty list.

    Example:
        >>> as_vector_refs((20, 10513))
        [(20, 10513)]
    """
    if isinstance(vectors, ConceptVector) or (
        isinstance(vectors, tuple) and len(vectors) == 2 and all(isinstance(x, Integral) for x in vectors)
    ):
        return [vectors if isinstance(vectors, ConceptVector) else _checked_pair(vectors)]
    out: list[VectorRef] = []
    for item in vectors:
        if isinstance(item, ConceptVector):
            out.append(item)
        elif isinstance(item, Sequence) and len(item) == 2 and all(isinstance(x, Integral) for x in item):
            out.append(_checked_pair(item))
        else:
            raise TypeError(f"expected a ConceptVector or a (layer, dim) pair of ints, got {item!r}")
    if not out:
        raise ValueError("no concept vector given")
    return out


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    if not isinstance(value, bool):
        try:
            return operator.index(value)  # int, numpy integer
        except TypeError:
            pass
    raise ValueError(f"{what} must be an integer, got {value!r}")


def _parse_string(text: str) -> Any:
    text = text.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"concept_vectors={text!r} is not valid JSON: {error}") from None
    pairs = [p for p in re.split(r"[\s,;]+", text) if p]
    out = []
    for pair in pairs:
        parts = pair.split(":")
        if len(parts) != 2:
            raise ValueError(
                f"concept_vectors={text!r}: {pair!r} is not 'layer:dim'; write e.g. '20:10513,21:398' or the JSON "
                "'[[20, 10513], [21, 398]]'"
            )
        out.append([_as_int(parts[0], f"the layer of {pair!r}"), _as_int(parts[1], f"the dim of {pair!r}")])
    return out


def _is_location(value: Any) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in value)
    )


def normalize_concept_vectors(vectors: Any, source: str = "concept_vectors") -> list[tuple[int, int]]:
    """``(layer, dim)`` pairs from ``ConceptVector`` records, ``(layer, dim)`` pairs (one or a list) or a string.

    Strings (the command line) are JSON (``"[[20, 10513], [21, 398]]"``) or ``"20:10513,21:398"``. Raises
    ``ValueError`` for an empty selection, a malformed entry, a negative index or a vector listed twice.
    """
    if isinstance(vectors, str):
        vectors = _parse_string(vectors)
    if isinstance(vectors, ConceptVector) or _is_location(vectors):
        vectors = [vectors]
    if not isinstance(vectors, Iterable):
        raise ValueError(f"{source} must be a list of (layer, dim) pairs or ConceptVector records, got {vectors!r}")
    locations: list[tuple[int, int]] = []
    for entry in vectors:
        if isinstance(entry, ConceptVector):
            layer, dim = entry.location
        elif isinstance(entry, (tuple, list)) and len(entry) == 2:
            layer, dim = entry
        else:
            raise ValueError(
                f"{source}: {entry!r} is not a (layer, dim) pair or a ConceptVector; write e.g. [[20, 10513]]"
            )
        layer = _as_int(layer, f"{source}: the layer of {entry!r}")
        dim = _as_int(dim, f"{source}: the dim of {entry!r}")
        if layer < 0 or dim < 0:
            raise ValueError(f"{source}: ({layer}, {dim}) has a negative index; layers and dims count from 0")
        if (layer, dim) in locations:
            raise ValueError(f"{source}: the concept vector ({layer}, {dim}) is listed twice")
        locations.append((layer, dim))
    if not locations:
        raise ValueError(f"{source} is empty: give at least one concept vector (layer, dim)")
    return locations


def as_concept_vectors(vectors: VectorRef | Iterable[VectorRef]) -> list[ConceptVector]:
    """:func:`as_vector_refs`, with each bare ``(layer, dim)`` as a ``ConceptVector`` with no concept name (``""``)
    and no data: one type for the code that reads the vectors.

    Example:
        >>> as_concept_vectors((20, 10513))[0].location
        (20, 10513)
    """
    return [ref if isinstance(ref, ConceptVector) else ConceptVector("", *ref) for ref in as_vector_refs(vectors)]


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
    elif _looks_local(path, str(path_or_hub_id)):
        # A typo in a local path must not become a Hub request.
        raise FileNotFoundError(f"no concept-vector file at {path} (a Hub dataset id looks like 'owner/name')")
    else:
        from datasets import load_dataset

        rows = list(load_dataset(str(path_or_hub_id), split=split))
    return [ConceptVector.from_json(row, i) for i, row in enumerate(rows)]


def save_concept_vectors(vectors: list[ConceptVector], path: str | os.PathLike) -> None:
    """Write ``vectors`` in the released JSON schema, atomically (a crash never leaves a half-written file)."""
    atomic_write_text(path, json.dumps([v.to_json() for v in vectors], ensure_ascii=False, indent=1))
