"""Evaluation of unlearning: answer likelihoods, the field's metrics (TOFU, MUSE, membership inference,
memorization), attacks (relearning, jailbreak, quantization), greedy answers and text overlap.

Example:
    >>> from hf_unlearn.evaluation import answer_log_probs
    >>> answer_log_probs(model, tokenizer, ["Who wrote Hamlet?"], [" Shakespeare"]).mean
"""

from .attacks import jailbreak_attack, relearning_attack
from .generation import answer_questions
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
from .overlap import UnicodeWordTokenizer, bleu, rouge_l, rouge_l_recall, text_overlap
from .prompts import CONCEPTVECTORS_PROMPT_TEMPLATE, DEFAULT_PROMPT_TEMPLATE, render_prompts

__all__ = [
    "CONCEPTVECTORS_PROMPT_TEMPLATE",
    "DEFAULT_PROMPT_TEMPLATE",
    "JAILBREAK_FAMILIES",
    "SAFETY_SYSTEM_PROMPT",
    "UnicodeWordTokenizer",
    "answer_questions",
    "bleu",
    "grandmother_prompt",
    "in_context_prompt",
    "jailbreak_attack",
    "jailbreak_prompts",
    "load_translated_questions",
    "relearning_attack",
    "render_prompts",
    "role_play_prompt",
    "rouge_l",
    "rouge_l_recall",
    "text_overlap",
    "translated_questions",
]
