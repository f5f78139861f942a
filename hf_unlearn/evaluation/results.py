"""A measured value with what a model card needs to cite it (``huggingface_hub.EvalResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class MetricValue:
    """One measured number.

    Attributes:
        name: metric name (``"forget_truth_ratio"``, ``"mia_min_k_auc"``, ...).
        value: the number (a plain float).
        split: which data it was measured on (``"forget"``, ``"retain"``, ``"holdout"``, ...).
        source: the paper or benchmark that defines it (for reports; a card's ``model-index`` cites sources by
            URL only).
        details: per-item values or parameters, for a report (not for the card).
    """

    name: str
    value: float
    split: str = ""
    source: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)

    def to_eval_result(self, dataset_name: str, dataset_type: str = "custom", task_type: str = "text-generation"):
        """The ``model-index`` entry of this value."""
        from huggingface_hub import EvalResult

        return EvalResult(
            task_type=task_type,
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split=self.split or None,
            metric_type=self.name,
            metric_name=self.name.replace("_", " "),
            metric_value=float(self.value),
        )
