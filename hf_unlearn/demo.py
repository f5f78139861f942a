"""``hf-unlearn demo``: make SmolLM2-135M-Instruct forget a concept it knows, then audit what was and was not erased.

The pipeline, on the embedded SmolLM2-135M-Instruct (:func:`hf_unlearn.smollm2.load_smollm2`, no Hub access) and
the project's own data for the concept (:mod:`hf_unlearn.concept_data`):

1. answer the concept's questions and unrelated questions, and evaluate the original
   (:func:`~hf_unlearn.evaluate_unlearning`: forget = the concept's questions with gold answers, retain = the
   background questions, holdout = unrelated questions never trained on);
2. locate the concept vectors in the original (:func:`~hf_unlearn.locate_concept_vectors`);
3. unlearn with a registered method (NPO by default) on the concept's paragraph, retaining a general-knowledge text;
4. the same with Needle (:class:`~hf_unlearn.NeedleTrainer`), which ablates and trains exactly the located vectors;
5. audit both: answers and metrics after, the concept vectors original vs unlearned (cosine, top-200 Jaccard),
   activation patching and parameter restoration (knowledge recovery scores, :mod:`hf_unlearn.dissect`), and a
   relearning attack (:func:`~hf_unlearn.evaluation.relearning_attack`: a few steps of fine-tuning on five of the
   concept's facts; do the other five come back?);
6. write the report folder: ``report.md``, ``figures/``, ``audit.json`` (:class:`~hf_unlearn.hub.UnlearningAudit`)
   and the unlearned model with its card (``README.md``), ready for ``hf-unlearn push``.

``quick=True`` runs the same pipeline on a tiny Llama built on the spot (random weights taught the built-in data for
a few dozen steps, with a word-level tokenizer built in memory), in well under two minutes on a CPU.

Example:
    >>> from hf_unlearn.demo import run_demo
    >>> print(run_demo("demo_report", quick=True).summary())
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .atomic_files import atomic_write, atomic_write_text
from .concept_data import BACKGROUND, BACKGROUND_TEXT, CONCEPTS, UNRELATED, get_concept
from .evaluation.prompts import DEFAULT_PROMPT_TEMPLATE
from .methods import get_method

__all__ = ["DEFAULT_OUTPUT_DIR", "DemoReport", "demo_methods", "render_report", "run_demo", "tiny_demo_model"]

DEFAULT_OUTPUT_DIR = "demo_report"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
REPORT_FILE = "report.md"
AUDIT_FILE = "audit.json"
FIGURES = {"before_after": "before_after.png", "krs": "krs.png"}
PROMPT = DEFAULT_PROMPT_TEMPLATE
#: The prompt of the greedy answers the report shows and the relearning attack compares. Two worked examples (facts
#: outside the built-in data) make SmolLM2 give a short answer: with the plain prompt it restates the question ("The
#: name of the train that takes students to Hogwarts is ...") and the overlap of two answers then measures the
#: restated question, not the knowledge. Teacher-forced scores (evaluation, locating, dissection) use ``PROMPT``.
ANSWER_PROMPT = (
    "Answer each question with a short answer.\n\nQuestion: What is the capital of Spain?\nAnswer: Madrid\n\n"
    "Question: Who discovered penicillin?\nAnswer: Alexander Fleming\n\n" + PROMPT
)
#: greedy answers stop at the end of their first line; this caps the rare answer that never ends one.
ANSWER_TOKENS = 32
#: generation length of the ROUGE metrics inside evaluate_unlearning (recall of a short gold answer: 32 is plenty).
EVAL_TOKENS = 32
BATCH_SIZE = 4
#: learning rates measured on SmolLM2 with this data (examples/dissect_unlearning.py: 30 steps on the concept's
#: paragraph). The methods' own default (1e-5, for TOFU-sized forget sets trained for epochs) barely moves the answers
#: in 30 steps; other methods keep their defaults.
MEASURED_LEARNING_RATES = {"npo": 5e-5, "grad_diff": 5e-5}
#: Needle's learning rate on the few trained columns is the ConceptVectors default (0.2); these steps at that rate
#: move the vectors far from the original (the point of the comparison) while the other weights stay bit-identical.
DEFAULT_NEEDLE_STEPS = 10
#: the tiny --quick model (width 64, taught for seconds) needs larger steps to move at all in 30 steps, and Needle's
#: 0.2 wipes out everything it knows (measured: NPO at 5e-5 changed its answers by 0.01 nats).
QUICK_LEARNING_RATE = 1e-3
QUICK_NEEDLE_LEARNING_RATE = 0.1


def demo_methods() -> list[str]:
    """The registered methods the demo can run (every method but Needle, which it runs anyway as the comparison).

    Example:
        >>> from hf_unlearn.demo import demo_methods
        >>> "npo" in demo_methods()
        True
    """
    from .methods import METHODS

    return [name for name in METHODS if name != "needle"]


# ----------------------------------------------------------------------------------------------------- tiny model


def _demo_texts(eos: str = "") -> list[str]:
    """Every built-in text the tiny model is taught: all concepts' QA and paragraphs, background and unrelated QA."""
    pairs = [pair for concept in CONCEPTS.values() for pair in concept["qa"]] + BACKGROUND + UNRELATED
    texts = [f"{PROMPT.format(q=q)} {a}{eos}" for q, a in pairs]
    return texts + [concept["text"] for concept in CONCEPTS.values()] + [BACKGROUND_TEXT]


def _vocabulary_texts() -> list[str]:
    return _demo_texts() + [ANSWER_PROMPT]


def tiny_demo_model(seed: int = 0, teach_steps: int = 100) -> tuple[nn.Module, Any]:
    """A tiny Llama (4 layers, width 64) and a word-level tokenizer over the built-in data, built in memory.

    The random model is taught every built-in question, answer and paragraph for ``teach_steps`` full-batch steps, so
    that it has something to forget; ``hf-unlearn demo --quick`` runs the whole pipeline on it in seconds.

    Example:
        >>> model, tokenizer = tiny_demo_model()
        >>> inputs = tokenizer("Question: Who wrote the Harry Potter books? Answer:", return_tensors="pt")
        >>> tokenizer.decode(model.generate(**inputs, max_new_tokens=8)[0])
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    splitter = pre_tokenizers.Whitespace()
    words = sorted({word for text in _vocabulary_texts() for word, _ in splitter.pre_tokenize_str(text)})
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
    backend.pre_tokenizer = splitter
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    if teach_steps > 0:
        # The answers end with EOS so that greedy answers stop after them, as an instruction model's do. Short and
        # long texts go in separate batches: padded together, most of each step would be padding.
        texts = _demo_texts(eos=tokenizer.eos_token)
        batches = []
        for group in ([t for t in texts if len(t) < 200], [t for t in texts if len(t) >= 200]):
            if group:
                batch = tokenizer(group, return_tensors="pt", padding=True)
                batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
                batches.append(batch)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(teach_steps):
            for batch in batches:
                model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return model.eval(), tokenizer


# ------------------------------------------------------------------------------------------------------- helpers


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def _qa(pairs: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    # Gold answers follow "Answer:" as a new word.
    return [{"question": q, "answer": " " + a} for q, a in pairs]


class _FirstLine:
    """Generation stopping criterion: a row stops once its answer holds a complete non-empty line, so a greedy answer
    ends with its first line instead of inventing the next question. A leading line break (SmolLM2 often starts its
    answer on the next line) does not count, which is why the newline cannot simply be an EOS token.

    ``answer_questions`` calls ``generate`` once per batch with the same criterion: a call whose prompt differs from
    the last one's is a new batch.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.prompt: torch.Tensor | None = None
        self.length = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        start = 0 if self.prompt is None else self.prompt.shape[1]
        if (self.prompt is None or input_ids.shape[1] <= self.length or input_ids.shape[0] != self.prompt.shape[0]
                or not torch.equal(input_ids[:, :start], self.prompt)):
            # First call of a batch: one new token has been generated after the prompt.
            self.prompt = input_ids[:, :-1].clone()
            start = self.prompt.shape[1]
        self.length = input_ids.shape[1]
        texts = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        return torch.tensor([bool(re.search(r"\S[^\n]*\n", text)) for text in texts], device=input_ids.device)


def _answer_kwargs(tokenizer) -> dict[str, Any]:
    """Generation settings of every greedy answer the demo reads: the short-answer prompt, the first line only."""
    from transformers import StoppingCriteriaList

    return dict(max_new_tokens=ANSWER_TOKENS, prompt_template=ANSWER_PROMPT, progress=False,
                stopping_criteria=StoppingCriteriaList([_FirstLine(tokenizer)]))


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _fmt(value: Any) -> str:
    """The one number format of the report (three decimals; integers as they are)."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    return f"{float(value):.3f}"


def _cell(text: Any, width: int = 48) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def _gives_gold(answer: str, gold: str) -> bool:
    """Whether a greedy answer contains the gold answer (case and a leading article ignored)."""
    gold = re.sub(r"^(the|a|an) ", "", gold.lower()).strip(" .")
    return bool(gold) and gold in answer.lower()


def _answer(text: str) -> str:
    """An answer's table cell; an empty answer (the model stopped at once) is shown as such."""
    return _cell(text) if text.strip() else "*(no answer)*"


def _display(method: str) -> str:
    """``NPO``, ``GradDiff``, ``Needle``: the trainer's name without ``Trainer``."""
    return get_method(method).trainer_class.__name__.removesuffix("Trainer")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class _Stages:
    """The overall progress bar: one tick per stage, the current stage in its description, and each stage's time."""

    def __init__(self, names: Sequence[str], progress: bool):
        self.bar = tqdm(total=len(names), desc="hf-unlearn demo", unit="stage", disable=not progress)
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.bar.set_postfix_str(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 2)
        self.bar.update()

    def close(self) -> None:
        self.bar.set_postfix_str("done")
        self.bar.close()


STAGES = (
    "load model", "answer before", "evaluate original", "locate concept vectors", "unlearn", "evaluate unlearned",
    "Needle", "concept-vector audit", "dissection", "relearning attack", "write report",
)


def _prepare_output_dir(path: Path, overwrite: bool) -> None:
    """Fail before minutes of work, not after: a non-empty folder is replaced only if it is an earlier demo report
    or with ``overwrite``."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        if not ((path / REPORT_FILE).is_file() and (path / AUDIT_FILE).is_file()):
            raise FileExistsError(
                f"{path} already holds files that are not a demo report; choose another output folder or pass "
                "overwrite=True (--overwrite) to replace it"
            )


def _train(spec, model, tokenizer, forget, retain, steps: int, learning_rate: float | None, seed: int,
           progress: bool, **kwargs: Any) -> dict[str, Any]:
    """Run a registered method for ``steps`` optimizer steps on ``model`` (in place); returns its settings and last
    logged metrics."""
    from .hub.cards import trainer_training_metrics

    with tempfile.TemporaryDirectory(prefix="hf_unlearn-demo-") as scratch:
        options = dict(
            output_dir=scratch, max_steps=steps, per_device_train_batch_size=BATCH_SIZE,
            # Two logs per run: the card's training metrics are the last ones, and the terminal stays readable.
            logging_steps=max(1, steps // 2), save_strategy="no", report_to="none", seed=seed,
            # Pinned memory only helps a GPU; on a CPU torch warns about it on every run.
            dataloader_pin_memory=torch.cuda.is_available(), disable_tqdm=not progress,
            use_cpu=next(model.parameters()).device.type == "cpu",
        )
        if learning_rate is not None:
            options["learning_rate"] = learning_rate
        config = spec.make_config(**options)
        trainer = spec.trainer_class(
            model, config, train_dataset=forget, retain_dataset=retain if config.retain_loss != "none" else None,
            processing_class=tokenizer, **kwargs,
        )
        trainer.train()
        metrics = trainer_training_metrics(trainer.state.log_history)
        del trainer  # the reference model and the optimizer state go with it
    model.eval()
    settings = {"steps": steps, "learning_rate": config.learning_rate, "batch_size": BATCH_SIZE,
                "retain_loss": config.retain_loss, "seed": seed}
    for name in ("beta", "ablation", "ablation_sigma"):
        if hasattr(config, name):
            settings[name] = getattr(config, name)
    return {"hyperparameters": settings, "training_metrics": metrics}


def _answers(model, tokenizer, questions: Sequence[str]) -> list[str]:
    from .evaluation import answer_questions

    return [_first_line(a) for a in answer_questions(model, tokenizer, questions, **_answer_kwargs(tokenizer))]


def _relearn(model, tokenizer, train: Sequence[tuple[str, str]], test_questions: Sequence[str],
             reference: Sequence[str], steps: int, learning_rate: float, seed: int) -> dict[str, Any]:
    from .evaluation import relearning_attack

    texts = [f"{PROMPT.format(q=q)} {a}" for q, a in train]
    with warnings.catch_warnings():
        # relearning_attack's own TrainingArguments leave pin_memory on; on a CPU torch then warns on every run.
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        result = relearning_attack(
            model, tokenizer, texts, list(test_questions), list(reference), steps=steps, learning_rate=learning_rate,
            batch_size=BATCH_SIZE, seed=seed, **_answer_kwargs(tokenizer),
        )
    for side in ("before", "after"):
        result[side]["answers"] = [_first_line(a) for a in result[side]["answers"]]
    return result


def _log_prob_summary(evaluation) -> dict[str, float | None]:
    return {split: evaluation.get("answer_log_prob", split) for split in ("forget", "retain", "holdout")}


# ------------------------------------------------------------------------------------------------------- figures


def _plot_before_after(path: Path, audit_dict: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    demo = audit_dict["meta"]["demo"]
    log_probs = audit_dict["meta"]["log_probs"]
    vectors = audit_dict["meta"]["concept_vector_audit"]
    models = list(log_probs)
    splits = [("forget", f"{demo['concept']} (forget)"), ("retain", "background (retain)"),
              ("holdout", "unrelated (held out)")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        values = [log_probs[model][split] or 0.0 for split, _ in splits]
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(splits))]
        left.bar(xs, values, width, label=model)
    left.set_xticks(range(len(splits)), [label for _, label in splits])
    left.set_ylabel("gold answer log-prob per token (higher = known)")
    left.axhline(0, color="grey", linewidth=0.5)
    left.set_title("What the models say")
    left.legend()
    names = list(vectors)
    metrics = [("mean_cosine_similarity", "cosine"), ("mean_jaccard_similarity", "top-k Jaccard")]
    width = 0.8 / len(metrics)
    for i, (key, label) in enumerate(metrics):
        xs = [j + (i - (len(metrics) - 1) / 2) * width for j in range(len(names))]
        right.bar(xs, [vectors[name][key] or 0.0 for name in names], width, label=label)
    right.set_xticks(range(len(names)), names)
    right.set_ylim(0, 1.05)
    right.set_ylabel("original vs unlearned concept vectors")
    right.set_title("What the weights still hold")
    right.legend(loc="upper right")
    fig.suptitle(f"{demo['model']}: unlearning {demo['concept']!r}")
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


# -------------------------------------------------------------------------------------------------------- report


@dataclass
class DemoReport:
    """What :func:`run_demo` measured and wrote.

    ``audit`` is the unlearned model's :class:`~hf_unlearn.hub.UnlearningAudit` (the content of ``audit.json``); the
    Needle comparison, the answers, the relearning attack and the timings are in ``audit.meta``. ``files`` maps
    ``"report"``, ``"audit"``, ``"card"``, ``"model"`` (when saved) and each figure to its path.

    Example:
        >>> report = run_demo("demo_report", quick=True)
        >>> print(report.summary()); report.audit.findings()
    """

    output_dir: Path
    audit: Any
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def meta(self) -> dict[str, Any]:
        return self.audit.meta

    def summary(self) -> str:
        """A few lines for the terminal: what was and was not erased, and where the report is."""
        return "\n".join(_summary_lines(self.audit.to_dict()) + [
            f"report: {self.files.get('report', self.output_dir / REPORT_FILE)} "
            f"({self.seconds:.0f} s; push with `hf-unlearn push {self.output_dir} --repo-id USER/NAME`)"
            if "model" in self.files else
            f"report: {self.files.get('report', self.output_dir / REPORT_FILE)} ({self.seconds:.0f} s)"
        ])

    def __str__(self) -> str:
        return self.summary()


def _krs_best(rows: Sequence[dict[str, Any]], experiment: str, component: str | None = None):
    chosen = [r for r in rows if r["experiment"] == experiment and (component is None or r["component"] == component)
              and r.get("krs") is not None]
    return max(chosen, key=lambda r: r["krs"]) if chosen else None


def _window_text(row: dict[str, Any]) -> str:
    layers = row.get("window") or [row["layer"]]
    return f"layers {min(layers)}-{max(layers)}" if len(layers) > 1 else f"layer {layers[0]}"


def _plain_summary(data: dict[str, Any]) -> list[str]:
    """The plain-language findings of the demo (behaviour, weights, dissection, relearning), each with its numbers and
    judged with the audit's own thresholds."""
    meta = data["meta"]
    demo, log_probs, t = meta["demo"], meta["log_probs"], data["thresholds"]
    method, concept = demo["method_display"], demo["concept"]
    original, unlearned, needle = log_probs["original"], log_probs[method], log_probs["Needle"]
    total = len(meta["answers"]["concept"])
    changed = meta["answers"]["changed"]

    def fall(model: dict[str, float], split: str) -> float:
        return original[split] - model[split]

    lines = []
    forgot = fall(unlearned, "forget") >= t["forget_log_prob_drop"]
    damaged = fall(unlearned, "holdout") > t["retain_log_prob_drop"] or fall(unlearned, "retain") > t[
        "retain_log_prob_drop"]
    lines.append(
        f"**Outputs: {method} {'erased' if forgot else 'did not clearly erase'} the concept from what the model "
        f"says.** The gold answers to the {total} {concept} questions went from a mean log-probability of "
        f"{_fmt(original['forget'])} to {_fmt(unlearned['forget'])} per token (a fall of "
        f"{_fmt(fall(unlearned, 'forget'))} nats; the audit asks for {_fmt(t['forget_log_prob_drop'])}) and "
        f"{changed[method]} of {total} greedy answers changed. Unrelated questions went from "
        f"{_fmt(original['holdout'])} to {_fmt(unlearned['holdout'])} and the retained background facts from "
        f"{_fmt(original['retain'])} to {_fmt(unlearned['retain'])}"
        + (": the rest of the model paid for it." if damaged else ": the rest of the model was kept.")
    )
    vectors = meta["concept_vector_audit"]
    cos_method, cos_needle = vectors[method]["mean_cosine_similarity"], vectors["Needle"]["mean_cosine_similarity"]
    jac_method, jac_needle = vectors[method]["mean_jaccard_similarity"], vectors["Needle"]["mean_jaccard_similarity"]
    unchanged = cos_method is not None and cos_method >= t["cosine_unchanged"]
    needle_forgot = fall(needle, "forget") >= t["forget_log_prob_drop"]
    moved = "left the concept vectors where they were" if unchanged else "moved the concept vectors"
    lines.append(
        f"**Weights: {method} {moved}.** The {demo['num_concept_vectors']} concept vectors located in the original "
        f"have a mean cosine of "
        f"{_fmt(cos_method)} with the same vectors after {method} (top-{demo['top_k']} token Jaccard "
        f"{_fmt(jac_method)}). Needle, which ablates and trains exactly those vectors, leaves them at cosine "
        f"{_fmt(cos_needle)} (Jaccard {_fmt(jac_needle)}) and "
        + (f"takes the gold answers to {_fmt(needle['forget'])}" if needle_forgot else
           f"moves the gold answers only to {_fmt(needle['forget'])}")
        + f" (unrelated: {_fmt(needle['holdout'])}, background: {_fmt(needle['retain'])})."
    )
    rows = data["dissection"]["rows"] if data.get("dissection") else []
    patch = _krs_best(rows, "activation_patching")
    restore = _krs_best(rows, "parameter_restoration")
    needle_restore = _krs_best(meta["needle"]["parameter_restoration"], "parameter_restoration")
    if patch and restore:
        recovered, restored = patch["krs"] >= t["krs_recovered"], restore["krs"] >= t["krs_recovered"]
        if recovered and not restored:
            reading = f"{method} changed how the stored knowledge is retrieved, not the knowledge itself"
        elif restored:
            reading = f"putting back the original value vectors undoes much of {method}'s change"
        else:
            reading = "no single window carries the change"
        text = (
            f"**Dissection: {reading}.** Patching the original's activations ({patch['component']}) into "
            f"{_window_text(patch)} of the {method} model gives a knowledge recovery score (KRS) of "
            f"{_fmt(patch['krs'])}; restoring the original value vectors gives at most {_fmt(restore['krs'])} "
            f"({_window_text(restore)})."
        )
        if needle_restore:
            text += (f" For Needle, restoring the value vectors gives up to {_fmt(needle_restore['krs'])} "
                     f"({_window_text(needle_restore)})"
                     + (": its change is in the vectors themselves." if needle_restore["krs"] >= t["krs_recovered"]
                        else "."))
        lines.append(text)
    relearn = meta["relearning"]
    m, n = relearn[method], relearn["Needle"]

    def back(result: dict[str, Any]) -> bool:
        return result["after"]["rouge_l"] - result["before"]["rouge_l"] >= t["attack_recovered"]

    verdicts = {True: "comes back", False: "does not come back"}
    lines.append(
        f"**Relearning: after {method} the knowledge {verdicts[back(m)]}; after Needle it {verdicts[back(n)]}.** "
        f"{relearn['steps']} fine-tuning steps on the original's answers to {len(relearn['train_questions'])} of the "
        f"questions take the ROUGE-L of the answers to the other {len(relearn['test_questions'])} (against the "
        f"original's) "
        f"from {_fmt(m['before']['rouge_l'])} to {_fmt(m['after']['rouge_l'])} for {method} and from "
        f"{_fmt(n['before']['rouge_l'])} to {_fmt(n['after']['rouge_l'])} for Needle (a rise of "
        f"{_fmt(t['attack_recovered'])} or more counts as recovery). This compares greedy answers, and the original "
        f"itself gives the gold answer to only {meta['answers']['gold_given']['original']} of {total} questions: the "
        "teacher-forced log-probabilities above are the stronger measure of what the model knows."
    )
    if demo["quick"]:
        lines.append("**These numbers come from a tiny model taught the built-in data for a few seconds (--quick):** "
                     "they check the pipeline, they say nothing about unlearning in a real model.")
    return lines


def _summary_lines(data: dict[str, Any]) -> list[str]:
    """The terminal summary: one line per finding, numbers included."""
    meta = data["meta"]
    demo, log_probs = meta["demo"], meta["log_probs"]
    method = demo["method_display"]
    vectors, relearn = meta["concept_vector_audit"], meta["relearning"]
    lines = [f"hf-unlearn demo: {demo['model']}, unlearning {demo['concept']!r} with {method} (vs Needle)"]
    header = f"  {'':9s} {'concept':>8s} {'retain':>8s} {'unrelated':>9s} {'vec cos':>8s} {'relearn':>15s}"
    lines.append(header + "   (gold answer log-prob per token; ROUGE-L before -> after relearning)")
    for name in log_probs:
        lp = log_probs[name]
        cos = vectors[name]["mean_cosine_similarity"] if name in vectors else None
        rl = relearn.get(name)
        rl_text = f"{_fmt(rl['before']['rouge_l'])} -> {_fmt(rl['after']['rouge_l'])}" if rl else "-"
        lines.append(f"  {name:9s} {_fmt(lp['forget']):>8s} {_fmt(lp['retain']):>8s} {_fmt(lp['holdout']):>9s} "
                     f"{_fmt(cos) if cos is not None else '-':>8s} {rl_text:>15s}")
    verdict = next((f for f in meta["findings"] if f.startswith("**Verdict")), None)
    if verdict:
        lines.append(verdict.replace("**", ""))
    return lines


def render_report(data: dict[str, Any]) -> str:
    """``report.md`` from an audit's dictionary (``UnlearningAudit.to_dict()``, i.e. the content of
    ``audit.json``): every number in the report is read from it.

    Example:
        >>> text = render_report(json.load(open("demo_report/audit.json")))
        >>> "## Relearning attack" in text
        True
    """
    meta = data["meta"]
    demo = meta["demo"]
    method, concept = demo["method_display"], demo["concept"]
    vectors, relearn = meta["concept_vector_audit"], meta["relearning"]
    out = [f"# hf-unlearn demo: unlearning {concept!r} from {demo['model']}", ""]
    out += [
        f"{method} ({demo['method']}) was run on the concept's paragraph, then the unlearned model was audited: "
        f"answers and metrics before and after, the concept vectors against Needle (which edits exactly those "
        f"vectors), activation patching and parameter restoration, and a relearning attack. Wall time "
        f"{demo['seconds']:.0f} s on {demo['device']} ({demo['torch_threads']} torch threads).", "",
        "## Summary", "",
    ]
    out += [f"- {line}" for line in _plain_summary(data)]
    out += ["", "Audit findings (the model card states the same):", ""]
    out += [f"- {line}" for line in meta["findings"]]

    out += ["", "## Setup", "", "| | |", "|---|---|"]
    rows = [
        ("model", demo["model"]), ("concept", concept), ("method", f"{method} (`{demo['method']}`)"),
        ("forget data", data["datasets"].get("forget", "-")), ("retain data", data["datasets"].get("retain", "-")),
        *[(f"{method} {k}", v) for k, v in data["hyperparameters"].items()],
        *[(f"Needle {k}", v) for k, v in meta["needle"]["hyperparameters"].items()],
        ("concept vectors", f"top {demo['num_concept_vectors']} by contrastive attribution in the original"),
        ("prompt (scores)", f"`{PROMPT!r}`"),
        ("prompt (greedy answers)", f"two worked examples, then `{PROMPT!r}`"),
    ]
    out += [f"| {k} | {_cell(v, 100)} |" for k, v in rows]

    out += ["", "## Answers before and after", "",
            f"Greedy answers to the {concept} questions (a short-answer prompt with two worked examples; first "
            "line), gold answer for reference.", "",
            f"| question | gold | original | {method} | Needle |", "|---|---|---|---|---|"]
    out += [f"| {_cell(r['question'], 60)} | {_cell(r['gold'], 24)} | {_answer(r['original'])} | "
            f"{_answer(r[method])} | {_answer(r['Needle'])} |" for r in meta["answers"]["concept"]]
    changed = meta["answers"]["changed"]
    total = len(meta["answers"]["concept"])
    gold_given = meta["answers"]["gold_given"]
    out += ["", f"Answers that changed: {method} {changed[method]}/{total}, Needle {changed['Needle']}/{total}. "
            f"Answers that contain the gold answer: original {gold_given['original']}/{total}, {method} "
            f"{gold_given[method]}/{total}, Needle {gold_given['Needle']}/{total}."]
    out += ["", "### Unrelated questions", "", f"| question | gold | original | {method} | Needle |",
            "|---|---|---|---|---|"]
    out += [f"| {_cell(r['question'], 60)} | {_cell(r['gold'], 24)} | {_answer(r['original'])} | "
            f"{_answer(r[method])} | {_answer(r['Needle'])} |" for r in meta["answers"]["unrelated"]]
    unrelated_changed = meta["answers"]["unrelated_changed"]
    out += ["", f"Unrelated answers that changed: {method} {unrelated_changed[method]}/"
            f"{len(meta['answers']['unrelated'])}, Needle {unrelated_changed['Needle']}/"
            f"{len(meta['answers']['unrelated'])}."]

    out += ["", "## Evaluation metrics", "",
            "`hf_unlearn.evaluate_unlearning`: forget = the concept's questions with gold answers, retain = the "
            "background questions (their facts are in the retain text), holdout = unrelated questions never trained "
            "on (the membership-inference non-members).", "",
            f"| metric | split | original | {method} | Needle |", "|---|---|---|---|---|"]
    before = {(r["metric"], r["split"]): r["value"] for r in data["evaluation_before"]["metrics"]}
    after = {(r["metric"], r["split"]): r["value"] for r in data["evaluation_after"]["metrics"]}
    needle_eval = meta["needle"]["evaluation"]
    for metric, split in before:
        needle_value = needle_eval.get(split or "all", {}).get(metric)
        out.append(f"| {metric} | {split or '-'} | {_fmt(before[(metric, split)])} | "
                   f"{_fmt(after.get((metric, split)))} | {_fmt(needle_value)} |")
    out += ["", "![before and after](figures/" + FIGURES["before_after"] + ")"]

    out += ["", "## Concept vectors", "",
            f"The {demo['num_concept_vectors']} value vectors located in the original "
            "(`hf_unlearn.locate_concept_vectors`, contrastive attribution on the concept's questions and paragraph), "
            "compared with the same vectors after unlearning (`hf_unlearn.audit_concept_vectors`).", "",
            f"| model | mean cosine | mean top-{demo['top_k']} Jaccard | mean L2 distance | largest layer change |",
            "|---|---|---|---|---|"]
    for name, summary in vectors.items():
        out.append(f"| {name} | {_fmt(summary['mean_cosine_similarity'])} | "
                   f"{_fmt(summary['mean_jaccard_similarity'])} | {_fmt(summary['mean_norm_distance'])} | "
                   f"{_fmt(summary['max_relative_change'])} |")
    out += ["", "Per vector (layer, dim):", "", f"| layer | dim | {method} cosine | {method} Jaccard | "
            "Needle cosine | Needle Jaccard |", "|---|---|---|---|---|---|"]
    needle_rows = {(v["layer"], v["dim"]): v for v in meta["needle"]["concept_vectors"]}
    for v in data["concept_vectors"]["vectors"]:
        other = needle_rows.get((v["layer"], v["dim"]), {})
        out.append(f"| {v['layer']} | {v['dim']} | {_fmt(v.get('cosine_similarity'))} | "
                   f"{_fmt(v.get('jaccard_similarity'))} | {_fmt(other.get('cosine_similarity'))} | "
                   f"{_fmt(other.get('jaccard_similarity'))} |")

    out += ["", "## Dissection: activation patching and parameter restoration", "",
            "Knowledge recovery score `KRS = 1 - D(original, patched) / D(original, unlearned)` over the answer "
            f"logits of {demo['num_probes']} probes (the concept's questions with their gold answers), for windows of "
            f"{demo['window']} layers (`hf_unlearn.dissect`). 1: the original behaviour is back; 0: no recovery.", "",
            "| model | experiment | component | best window | best KRS | mean KRS |", "|---|---|---|---|---|---|"]
    lines = [(method, r) for r in data["dissection"]["rows"]] + [("Needle", r) for r in
                                                                  meta["needle"]["parameter_restoration"]]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for name, row in lines:
        groups.setdefault((name, row["experiment"], row["component"]), []).append(row)
    for (name, experiment, component), group in groups.items():
        best = max(group, key=lambda r: r["krs"])
        out.append(f"| {name} | {experiment.replace('_', ' ')} | {component} | {_window_text(best)} | "
                   f"{_fmt(best['krs'])} | {_fmt(_mean([r['krs'] for r in group]))} |")
    out += ["", "![KRS by layer](figures/" + FIGURES["krs"] + ")"]

    out += ["", "## Relearning attack", "",
            f"`hf_unlearn.evaluation.relearning_attack`: {relearn['steps']} steps of fine-tuning (lr "
            f"{relearn['learning_rate']:g}) on the original model's answers to {len(relearn['train_questions'])} of "
            f"the concept's questions (what anyone holding the original can collect); the other "
            f"{len(relearn['test_questions'])} questions are answered before and after and compared with the "
            "original's answers (ROUGE-L and BLEU).", "",
            "| model | ROUGE-L before | ROUGE-L after | BLEU before | BLEU after |", "|---|---|---|---|---|"]
    for name in (method, "Needle"):
        r = relearn[name]
        out.append(f"| {name} | {_fmt(r['before']['rouge_l'])} | {_fmt(r['after']['rouge_l'])} | "
                   f"{_fmt(r['before']['bleu'])} | {_fmt(r['after']['bleu'])} |")
    out += ["", f"| held-out question | original | {method} before | {method} after | Needle after |",
            "|---|---|---|---|---|"]
    for i, question in enumerate(relearn["test_questions"]):
        attacked = relearn[method]
        out.append(f"| {_cell(question, 60)} | {_answer(relearn['reference'][i])} | "
                   f"{_answer(attacked['before']['answers'][i])} | {_answer(attacked['after']['answers'][i])} | "
                   f"{_answer(relearn['Needle']['after']['answers'][i])} |")

    out += ["", "## Files", "",
            f"- `{AUDIT_FILE}`: every number above (`hf_unlearn.hub.UnlearningAudit.from_json`).",
            "- `README.md`: the model card, rendered from the same audit.",
            "- `figures/`: " + ", ".join(f"`{f}`" for f in FIGURES.values()) + "."]
    if demo["model_saved"]:
        out += ["- the unlearned model and its tokenizer; push the folder in one commit with "
                "`hf-unlearn push <this folder> --repo-id USER/NAME`."]
    out += ["", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in demo["stage_seconds"].items()) + "."]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------- run


def run_demo(
    output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR,
    quick: bool = False,
    concept: str = "Harry Potter",
    method: str = "npo",
    steps: int = 30,
    learning_rate: float | None = None,
    needle_steps: int = DEFAULT_NEEDLE_STEPS,
    needle_learning_rate: float | None = None,
    top_n: int = 20,
    relearn_steps: int = 20,
    relearn_learning_rate: float = 1e-4,
    window: int = 5,
    save_model: bool = True,
    overwrite: bool = False,
    seed: int = 0,
    threads: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> DemoReport:
    """Unlearn ``concept`` with ``method``, audit it against Needle, and write the report folder ``output_dir``.

    Args:
        output_dir: the report folder. An earlier demo report there is replaced; any other non-empty folder only
            with ``overwrite``.
        quick: the tiny built-in model (:func:`tiny_demo_model`) instead of SmolLM2-135M-Instruct.
        concept: a built-in concept of :mod:`hf_unlearn.concept_data` (``"Harry Potter"``, ``"The Moon"``, ...).
        method: a registered method (:func:`demo_methods`); preference methods learn to answer "I don't know."
        steps, learning_rate: the method's optimizer steps and learning rate (default: 5e-5 for NPO and GradDiff,
            measured on SmolLM2 with this data; the method's own default for the others).
        needle_steps, needle_learning_rate: Needle's steps and learning rate on the concept vectors (default 0.2,
            ConceptVectors'). ``quick`` has its own learning-rate defaults, sized for the tiny model.
        top_n: how many concept vectors are located, audited and trained by Needle.
        relearn_steps, relearn_learning_rate: the relearning attack's fine-tuning.
        window: layers per window of the dissection (odd; capped at the model's depth).
        save_model: write the unlearned model's weights and tokenizer too (the folder is then ready to push).
        seed: seeds training, the Needle ablation noise and the attack.
        threads: torch intra-op threads (default: torch's own choice).
        device: ``"cpu"``, ``"cuda"``, ... (default: cuda if available).
        progress: the overall progress bar and the trainers' bars.

    Example:
        >>> report = run_demo("demo_report", quick=True)
        >>> print(report.summary())
    """
    from transformers import set_seed

    from . import __version__
    from .concepts import audit_concept_vectors, locate_concept_vectors
    from .dissect import activation_patching, make_probes, parameter_restoration
    from .evaluation import evaluate_unlearning
    from .evaluation.evaluate import DEFAULT_METRICS
    from .hub import AttackResult, UnlearningAudit, render_unlearning_card, save_audited

    start = time.perf_counter()
    spec = get_method(method)
    if spec.name == "needle":
        raise ValueError("the demo compares a fine-tuning method with Needle; choose another method "
                         f"({', '.join(demo_methods())})")
    data = get_concept(concept)
    concept = next(name for name, value in CONCEPTS.items() if value is data)
    for name, value in (("steps", steps), ("needle_steps", needle_steps), ("top_n", top_n),
                        ("relearn_steps", relearn_steps), ("window", window)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    output_dir = Path(output_dir).expanduser().resolve()
    _prepare_output_dir(output_dir, overwrite)
    if threads is not None:
        torch.set_num_threads(threads)
    target = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_seed(seed)
    name, display = spec.name, _display(spec.name)
    if learning_rate is None:
        learning_rate = QUICK_LEARNING_RATE if quick else MEASURED_LEARNING_RATES.get(name)
    if needle_learning_rate is None and quick:
        needle_learning_rate = QUICK_NEEDLE_LEARNING_RATE

    stage = _Stages(STAGES, progress)
    with stage("load model"):
        if quick:
            original, tokenizer = tiny_demo_model(seed)
            model_label, base_model = "a tiny Llama built in memory (--quick)", None
        else:
            from .smollm2 import load_smollm2

            original, tokenizer = load_smollm2()
            model_label, base_model = "SmolLM2-135M-Instruct", SMOLLM2_HUB_ID
        original.to(target).eval()
        num_layers = original.config.num_hidden_layers
    window = min(window, num_layers if num_layers % 2 else num_layers - 1)

    qa, questions = data["qa"], [q for q, _ in data["qa"]]
    forget_qa, retain_qa, holdout_qa = _qa(qa), _qa(BACKGROUND), _qa(UNRELATED)
    # privleak and forget quality need a model never trained on the concept, which the demo does not have.
    metrics = tuple(m for m in DEFAULT_METRICS if m not in ("privleak", "forget_quality"))
    evaluation_kwargs = dict(metrics=metrics, prompt_template=PROMPT, max_new_tokens=EVAL_TOKENS, progress=progress)

    with stage("answer before"):
        before_concept = _answers(original, tokenizer, questions)
        before_unrelated = _answers(original, tokenizer, [q for q, _ in UNRELATED])
    with stage("evaluate original"):
        evaluation_before = evaluate_unlearning(original, tokenizer, forget_qa, retain_qa, holdout_qa,
                                                **evaluation_kwargs)
    with stage("locate concept vectors"):
        vectors = locate_concept_vectors(
            original, tokenizer, concept, questions=questions, answers=[a for _, a in qa], text=data["text"],
            background_questions=[q for q, _ in BACKGROUND], background_answers=[a for _, a in BACKGROUND],
            background_text=BACKGROUND_TEXT, top_n=top_n, prompt_template=PROMPT, progress=progress,
        )

    forget_text, retain_text = _sentences(data["text"]), _sentences(BACKGROUND_TEXT)
    if spec.preference:
        forget = [{"prompt": PROMPT.format(q=q), "chosen": " I don't know.", "rejected": " " + a} for q, a in qa]
        forget_description = f"the {len(qa)} {concept} questions: 'I don't know.' preferred to the gold answer"
    else:
        forget = forget_text
        forget_description = f"hf_unlearn's built-in {concept} paragraph ({len(forget_text)} sentences)"
    retain_description = f"hf_unlearn's built-in general-knowledge paragraph ({len(retain_text)} sentences)"

    with stage("unlearn"):
        unlearned = copy.deepcopy(original)
        trained = _train(spec, unlearned, tokenizer, forget, retain_text, steps, learning_rate, seed, progress)
    with stage("evaluate unlearned"):
        evaluation_after = evaluate_unlearning(unlearned, tokenizer, forget_qa, retain_qa, holdout_qa,
                                               **evaluation_kwargs)
        after_concept = _answers(unlearned, tokenizer, questions)
        after_unrelated = _answers(unlearned, tokenizer, [q for q, _ in UNRELATED])
    with stage("Needle"):
        needle = copy.deepcopy(original)
        needle_trained = _train(get_method("needle"), needle, tokenizer, forget_text, None, needle_steps,
                                needle_learning_rate, seed, progress, vectors=vectors)
        needle_evaluation = evaluate_unlearning(needle, tokenizer, forget_qa, retain_qa, holdout_qa,
                                                **evaluation_kwargs)
        needle_concept = _answers(needle, tokenizer, questions)
        needle_unrelated = _answers(needle, tokenizer, [q for q, _ in UNRELATED])
    with stage("concept-vector audit"):
        vector_audit = audit_concept_vectors(original, unlearned, vectors, tokenizer=tokenizer)
        needle_vector_audit = audit_concept_vectors(original, needle, vectors, tokenizer=tokenizer)
    # The relearning attack compares the original's own answers; a question it left unanswered has nothing to
    # compare.
    answered = [(q, a) for q, a in zip(questions, before_concept) if a]
    if len(answered) < 2:
        raise ValueError(f"the original model answered {len(answered)} of the {len(questions)} {concept} questions: "
                         "the relearning attack needs at least two answers; choose another concept")
    with stage("dissection"):
        # The gold answers are what the evaluation scores and unlearning targeted: the KRS says how much of the
        # original's logits on them a window brings back.
        probes = make_probes(original, tokenizer, questions, answers=[" " + a for _, a in qa], prompt_template=PROMPT)
        dissection = activation_patching(original, unlearned, tokenizer, probes, window=window, progress=progress)
        dissection = dissection + parameter_restoration(original, unlearned, tokenizer, probes, params="mlp_out",
                                                        window=window, progress=progress)
        needle_restoration = parameter_restoration(original, needle, tokenizer, probes, params="mlp_out",
                                                   window=window, progress=progress)
    with stage("relearning attack"):
        # Fine-tuned on the original's answers to half of the questions (what anyone holding the original model can
        # collect), in the format the answers are compared in; do the other answers come back?
        half = len(answered) // 2
        train, test = answered[:half], answered[half:]
        reference = [a for _, a in test]
        attack = dict(steps=relearn_steps, learning_rate=relearn_learning_rate, seed=seed)
        relearning = _relearn(unlearned, tokenizer, train, [q for q, _ in test], reference, **attack)
        needle_relearning = _relearn(needle, tokenizer, train, [q for q, _ in test], reference, **attack)

    with stage("write report"):
        answers = {
            "concept": [{"question": q, "gold": a, "original": b, display: u, "Needle": n}
                        for (q, a), b, u, n in zip(qa, before_concept, after_concept, needle_concept)],
            "unrelated": [{"question": q, "gold": a, "original": b, display: u, "Needle": n}
                          for (q, a), b, u, n in zip(UNRELATED, before_unrelated, after_unrelated, needle_unrelated)],
        }
        answers["changed"] = {key: sum(r["original"] != r[key] for r in answers["concept"]) for key in (display,
                                                                                                         "Needle")}
        answers["unrelated_changed"] = {key: sum(r["original"] != r[key] for r in answers["unrelated"])
                                        for key in (display, "Needle")}
        answers["gold_given"] = {key: sum(_gives_gold(r[key], r["gold"]) for r in answers["concept"])
                                 for key in ("original", display, "Needle")}
        stage_seconds = dict(stage.seconds)
        meta = {
            "demo": {
                "model": model_label, "quick": quick, "concept": concept, "method": name, "method_display": display,
                "num_concept_vectors": len(vectors), "top_k": vector_audit.top_k, "window": window,
                "num_probes": len(probes), "model_saved": save_model, "device": str(target),
                "torch_threads": torch.get_num_threads(), "seed": seed, "hf_unlearn_version": __version__,
                "seconds": round(time.perf_counter() - start, 1), "stage_seconds": stage_seconds,
            },
            "log_probs": {"original": _log_prob_summary(evaluation_before),
                          display: _log_prob_summary(evaluation_after),
                          "Needle": _log_prob_summary(needle_evaluation)},
            "concept_vector_audit": {display: vector_audit.summary(), "Needle": needle_vector_audit.summary()},
            "concept_vectors_located": [list(v.location) for v in vectors],
            "answers": answers,
            "needle": {
                "hyperparameters": needle_trained["hyperparameters"],
                "training_metrics": needle_trained["training_metrics"],
                "evaluation": needle_evaluation.to_dict(),
                "concept_vectors": needle_vector_audit.to_dict()["vectors"],
                "parameter_restoration": needle_restoration.rows,
            },
            "relearning": {
                "steps": relearn_steps, "learning_rate": relearn_learning_rate,
                "train_questions": [q for q, _ in train], "test_questions": [q for q, _ in test],
                "reference": reference,
                display: relearning, "Needle": needle_relearning,
            },
        }
        datasets = {"forget": forget_description, "retain": retain_description,
                    "evaluation": f"{len(qa)} {concept} questions, {len(BACKGROUND)} background and "
                                  f"{len(UNRELATED)} unrelated questions with gold answers (hf_unlearn built-in)"}
        audit = UnlearningAudit(
            name, base_model, concept=concept, hyperparameters=trained["hyperparameters"], datasets=datasets,
            evaluation_before=evaluation_before, evaluation_after=evaluation_after, concept_vectors=vector_audit,
            dissection=dissection, attacks=[AttackResult.from_relearning(relearning)],
            training_metrics=trained["training_metrics"], meta=meta,
        )
        meta["findings"] = audit.findings()
        report_data = audit.to_dict()
        card_name = f"{'SmolLM2-135M-Instruct' if not quick else 'tiny-llama'}-{_slug(display)}-{_slug(concept)}"
        card_kwargs = {"model_name": card_name}
        if not quick:
            card_kwargs.update(license="apache-2.0", language="en")
        files: dict[str, Path] = {}
        with tempfile.TemporaryDirectory(prefix="hf_unlearn-demo-figures-") as scratch:
            figure_paths = [Path(scratch) / FIGURES["before_after"], Path(scratch) / FIGURES["krs"]]
            _plot_before_after(figure_paths[0], report_data)
            (dissection.tagged(model=display) + needle_restoration.tagged(model="Needle")).plot(
                figure_paths[1], title=f"{model_label}: {concept!r} unlearned with {display} and with Needle")
            if save_model:
                save_audited(unlearned, tokenizer, audit, output_dir, figures=figure_paths, overwrite=True,
                             **card_kwargs)
                files["model"] = output_dir
            else:
                if output_dir.exists():
                    shutil.rmtree(output_dir)
                (output_dir / "figures").mkdir(parents=True)
                for path in figure_paths:
                    shutil.copyfile(path, output_dir / "figures" / path.name)
                audit.to_json(output_dir / AUDIT_FILE)
                card = render_unlearning_card(audit, figures=[f"figures/{p.name}" for p in figure_paths],
                                              **card_kwargs)
                atomic_write_text(output_dir / "README.md", str(card))
        atomic_write_text(output_dir / REPORT_FILE, render_report(report_data))
        files.update(report=output_dir / REPORT_FILE, audit=output_dir / AUDIT_FILE, card=output_dir / "README.md",
                     **{key: output_dir / "figures" / value for key, value in FIGURES.items()})
    stage.close()
    return DemoReport(output_dir, audit, round(time.perf_counter() - start, 1), files)
