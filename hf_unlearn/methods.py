"""The one registry of unlearning methods: name → config class, trainer class, data format, reference, retain set.

The CLI, :func:`~hf_unlearn.recipes.unlearn_concept`, the examples, the benchmarks and the tests look methods up
here, so a new method is one entry in ``METHODS``.

Example:
    >>> from hf_unlearn import get_method
    >>> spec = get_method("npo"); spec.trainer_class(model, spec.config_class(max_steps=10), train_dataset=forget)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .trainers import (
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
)

__all__ = ["DATA_FORMATS", "METHODS", "MethodSpec", "get_method"]

TEXT = "text/prompt-completion"
PREFERENCE = "preference (chosen/rejected)"
CONCEPT_VECTORS = "text/prompt-completion + concept vectors"
#: what each ``MethodSpec.data_format`` means, for help texts.
DATA_FORMATS = {
    TEXT: "a 'text' column, 'prompt' + 'completion', or 'messages' (conversational)",
    PREFERENCE: "'prompt', 'chosen' (the refusal or alternate answer) and 'rejected' (the answer to forget)",
    CONCEPT_VECTORS: "text or prompt-completion, plus the concept vectors to train (config.concept_vectors)",
}


@dataclass(frozen=True)
class MethodSpec:
    """One unlearning method: its config and trainer classes and what it needs.

    Whether a reference model is needed comes from the trainer itself (``forget_uses_reference`` for the forget
    term, ``uses_reference(args)`` for the settings as a whole, e.g. a KL retain term), never from a copy kept here.

    Example:
        >>> spec = get_method("rmu")
        >>> spec.uses_reference(), spec.uses_retain, spec.data_format
    """

    name: str
    config_class: type[UnlearningConfig]
    trainer_class: type[UnlearningTrainer]
    data_format: str
    summary: str

    @property
    def forget_uses_reference(self) -> bool:
        """Whether the forget term itself needs a reference model (the trainer's ``forget_uses_reference``)."""
        return self.trainer_class.forget_uses_reference

    @property
    def preference(self) -> bool:
        """Whether the forget set is in the preference format (the trainer's ``preference``)."""
        return self.trainer_class.preference

    @property
    def default_retain_loss(self) -> str:
        """The config's default ``retain_loss``, read from the dataclass field (no config is built)."""
        return next(f.default for f in fields(self.config_class) if f.name == "retain_loss")

    @property
    def uses_retain(self) -> bool:
        """Whether the method with its default settings trains on a retain set."""
        return self.default_retain_loss != "none"

    @property
    def retain_losses(self) -> tuple[str, ...]:
        return self.config_class.retain_losses

    def uses_reference(self, args: UnlearningConfig | None = None) -> bool:
        """Whether the method with ``args`` (default: its default config) needs a reference model."""
        return self.trainer_class.uses_reference(args if args is not None else self.config_class())

    def make_config(self, **kwargs: Any) -> UnlearningConfig:
        """The method's config with its defaults and ``kwargs``."""
        return self.config_class(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config_class": self.config_class.__name__,
            "trainer_class": self.trainer_class.__name__,
            "data_format": self.data_format,
            "uses_reference": self.uses_reference(),
            "uses_retain": self.uses_retain,
            "retain_loss": self.default_retain_loss,
            "summary": self.summary,
        }


def _spec(config_class, trainer_class, data_format: str, summary: str) -> MethodSpec:
    return MethodSpec(trainer_class.method_name, config_class, trainer_class, data_format, summary)


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        _spec(GradAscentConfig, GradAscentTrainer, TEXT, "gradient ascent on the forget set"),
        _spec(GradDiffConfig, GradDiffTrainer, TEXT, "gradient ascent on the forget set, descent on the retain set"),
        _spec(NPOConfig, NPOTrainer, TEXT, "negative preference optimisation against a frozen reference"),
        _spec(SimNPOConfig, SimNPOTrainer, TEXT, "reference-free NPO on length-normalised log-probs"),
        _spec(IdkDPOConfig, IdkDPOTrainer, PREFERENCE, "DPO preferring a refusal to the answer to forget"),
        _spec(RMUConfig, RMUTrainer, TEXT, "scramble the forget set's activations at one layer"),
        _spec(UNDIALConfig, UNDIALTrainer, TEXT, "self-distillation to the reference with the target logit lowered"),
        _spec(WGAConfig, WGATrainer, TEXT, "gradient ascent weighted by each token's probability"),
        _spec(SatImpConfig, SatImpTrainer, TEXT, "gradient ascent weighted by saturation and importance"),
        _spec(NeedleConfig, NeedleTrainer, CONCEPT_VECTORS, "ablate concept vectors, then train only them"),
    )
}


def get_method(name: str) -> MethodSpec:
    """The registered method ``name`` (case and ``-``/``_`` do not matter); a ``ValueError`` listing them otherwise.

    Example:
        >>> spec = get_method("grad-diff")
        >>> spec.trainer_class, spec.config_class
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in METHODS:
        raise ValueError(f"unknown unlearning method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[key]
