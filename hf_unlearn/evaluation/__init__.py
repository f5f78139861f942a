"""Evaluation of unlearning: answer likelihoods, the field's metrics (TOFU, MUSE, membership inference,
memorization), attacks (relearning, jailbreak, quantization), greedy answers and text overlap.

Example:
    >>> from hf_unlearn.evaluation import answer_log_probs
    >>> answer_log_probs(model, tokenizer, ["Who wrote Hamlet?"], [" Shakespeare"]).mean
"""

from .attacks import jailbreak_attack, quantization_attack, quantized_weights, relearning_attack
from .benchmarks import load_muse, load_tofu
from .evaluate import QASet, UnlearningEvaluation, UnlearningEvaluationCallback, evaluate_unlearning
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
from .likelihood import AnswerLogProbs, answer_log_probs, mean_answer_log_prob
from .memorization import exact_memorization, extraction_strength, knowledge_memorization, verbatim_memorization
from .mia import attack_auc, membership_inference, mia_scores, privleak
from .overlap import UnicodeWordTokenizer, bleu, rouge_l, rouge_l_recall, text_overlap
from .prompts import CONCEPTVECTORS_PROMPT_TEMPLATE, DEFAULT_PROMPT_TEMPLATE, render_prompts
from .results import MetricValue
from .tofu import (
    answer_probability,
    forget_quality,
    model_utility,
    normalised_probability,
    rouge_recall,
    truth_ratio,
    truth_ratio_score,
    truth_ratios,
)

__all__ = [
    "CONCEPTVECTORS_PROMPT_TEMPLATE",
    "DEFAULT_PROMPT_TEMPLATE",
    "JAILBREAK_FAMILIES",
    "SAFETY_SYSTEM_PROMPT",
    "AnswerLogProbs",
    "MetricValue",
    "QASet",
    "UnicodeWordTokenizer",
    "UnlearningEvaluation",
    "UnlearningEvaluationCallback",
    "answer_log_probs",
    "answer_probability",
    "answer_questions",
    "attack_auc",
    "bleu",
    "evaluate_unlearning",
    "exact_memorization",
    "extraction_strength",
    "forget_quality",
    "grandmother_prompt",
    "in_context_prompt",
    "jailbreak_attack",
    "jailbreak_prompts",
    "knowledge_memorization",
    "load_muse",
    "load_tofu",
    "load_translated_questions",
    "mean_answer_log_prob",
    "membership_inference",
    "mia_scores",
    "model_utility",
    "normalised_probability",
    "privleak",
    "quantization_attack",
    "quantized_weights",
    "relearning_attack",
    "render_prompts",
    "role_play_prompt",
    "rouge_l",
    "rouge_l_recall",
    "rouge_recall",
    "text_overlap",
    "translated_questions",
    "truth_ratio",
    "truth_ratio_score",
    "truth_ratios",
    "verbatim_memorization",
]
