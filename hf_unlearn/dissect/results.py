"""``DissectionTable``: rows of (experiment, component, layer, KRS) that serialise to JSON and draw a PNG."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..atomic_files import atomic_write, atomic_write_text


def _label(row: dict[str, Any]) -> str:
    return f"{row['model']}: {row['component']}" if "model" in row else row["component"]


@dataclass
class DissectionTable:
    """Results of activation patching / parameter restoration (and anything with the same row shape).

    Example:
        >>> table = activation_patching(original, unlearned, tokenizer, probes) + parameter_restoration(...)
        >>> table.plot("dissection.png"); table.to_json("dissection.json")
    """

    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __add__(self, other: DissectionTable) -> DissectionTable:
        return DissectionTable(self.rows + other.rows, {**self.meta, **other.meta})

    def tagged(self, **tags: Any) -> DissectionTable:
        """A copy whose rows carry ``tags`` (e.g. ``model="npo"``), to combine tables of several unlearned models."""
        return DissectionTable([{**r, **tags} for r in self.rows], dict(self.meta))

    def lines(self, experiment: str) -> list[str]:
        """Labels of the figure's lines for ``experiment``: the component, prefixed with the ``model`` tag if any."""
        return list(dict.fromkeys(_label(r) for r in self.rows if r["experiment"] == experiment))

    def curve(self, experiment: str, line: str) -> tuple[list[int], list[float]]:
        """Layers and KRS values of one line (a component, or ``"<model>: <component>"`` for tagged rows)."""
        rows = [r for r in self.rows if r["experiment"] == experiment and _label(r) == line]
        rows.sort(key=lambda r: r["layer"])
        return [r["layer"] for r in rows], [r["krs"] for r in rows]

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "rows": self.rows}

    def to_json(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> DissectionTable:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return cls(data["rows"], data.get("meta", {}))

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def plot(self, path: str | os.PathLike, title: str | None = None) -> None:
        """KRS by centre layer, one line per component; restoration beside patching."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        experiments = [
            e for e in ("activation_patching", "parameter_restoration") if any(r["experiment"] == e for r in self.rows)
        ]
        experiments += sorted({r["experiment"] for r in self.rows} - set(experiments))
        fig, axes = plt.subplots(1, len(experiments), figsize=(5.5 * len(experiments), 4), squeeze=False, sharey=True)
        for ax, experiment in zip(axes[0], experiments):
            for line in self.lines(experiment):
                layers, values = self.curve(experiment, line)
                ax.plot(layers, values, marker="o", markersize=3, label=line)
            ax.axhline(0, color="grey", linewidth=0.5)
            ax.axhline(1, color="grey", linewidth=0.5, linestyle="--")
            ax.set_title(experiment.replace("_", " "))
            ax.set_xlabel("centre layer of the window")
            ax.legend()
        axes[0][0].set_ylabel("knowledge recovery score")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        try:
            atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
        finally:
            plt.close(fig)

    def __str__(self) -> str:
        lines = ["| experiment | line | layer | KRS |", "|---|---|---|---|"]
        lines += [f"| {r['experiment']} | {_label(r)} | {r['layer']} | {r['krs']:.3f} |" for r in self.rows]
        return "\n".join(lines)
