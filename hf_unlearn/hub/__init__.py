"""Model cards and Hub pushes for unlearned and early-exit models.

Example:
    >>> from hf_unlearn.hub import UnlearningAudit, push_audited_to_hub
    >>> push_audited_to_hub(model, tokenizer, UnlearningAudit("npo", evaluation_after=after), "me/model-npo")
"""

from .audit import DEFAULT_THRESHOLDS, AttackResult, UnlearningAudit
from .cards import render_early_exit_card, render_trainer_card, render_unlearning_card
from .push import (
    HubPushError,
    check_push_folder,
    push_audited_to_hub,
    push_early_exit_to_hub,
    save_audited,
    save_early_exit,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "AttackResult",
    "HubPushError",
    "UnlearningAudit",
    "check_push_folder",
    "push_audited_to_hub",
    "push_early_exit_to_hub",
    "render_early_exit_card",
    "render_trainer_card",
    "render_unlearning_card",
    "save_audited",
    "save_early_exit",
]
