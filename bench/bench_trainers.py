"""Optimizer-step time of every hf_unlearn trainer relative to a plain ``transformers.Trainer`` causal-LM step.

What is measured. Each variant is a trainer built once on its own copy of the same randomly initialised model
and the same synthetic data (every sequence has exactly ``--seq-len`` tokens, so no step pads and every batch
costs the same). A ``TrainerCallback`` records ``on_step_end`` timestamps; one optimizer step is the interval
between two consecutive ``on_step_end`` calls, so it contains everything the training loop does per step:
fetching the forget batch, ``get_batch_samples`` (retain pairing and collation for the unlearning trainers),
forward and backward, gradient clipping, the optimizer step and the callbacks. ``on_step_begin`` ..
``on_step_end`` (the "compute" part, i.e. without data fetching) is reported as well.

How. Rounds are interleaved: every round runs ``trainer.train()`` with ``max_steps = warmup + steps`` once per
variant (in a rotated order, so no variant always follows the same one), the first ``warmup`` steps of each run
are discarded, and the medians are taken over the remaining steps of all clean runs. Interleaving spreads slow
drift of the machine (thermal, other load) over all variants instead of charging it to whichever ran last.

Before the timed rounds every trainer runs one untimed step with forward hooks on the policy and the reference
model, which *counts* the passes each method really makes (and warms up allocators and the optimizer state).
Those counts, not assumptions, go into the JSON; they are also checked against what the method should do.

Shared machines. Another job on the same cores can slow a whole run many times over (oversubscribed OpenMP
threads). A run whose median is more than ``--disturbed-factor`` (1.5) times the variant's best run is flagged,
excluded from the medians and re-run (interleaved, within a time budget); a run is cut short after two
consecutive steps slower than ``--abort-factor`` (3) times the variant's fastest step. The JSON keeps every run.
Round-paired ratios (each run over the plain run of the same round) cross-check the pooled medians.

Run ``python bench/bench_trainers.py`` (about 4 minutes on 2 CPU cores) or ``--quick`` (about 1 minute).
"""

from __future__ import annotations

import os

# Before transformers / huggingface_hub are imported: they read these at import time, and nothing here may
# touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Before torch loads its OpenMP runtime. With the default (spinning) wait policy, a second job on the same
# cores makes every parallel region wait for a descheduled spinning thread: steps became 5-50x slower in
# bursts on a shared 2-core machine. Sleeping waiters degrade gracefully (same load: 1.5-3x, evenly across
# variants), which is what ratios need. Export OMP_WAIT_POLICY yourself to measure another policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (  # noqa: E402
    DataCollatorForLanguageModeling,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    # So ``python bench/bench_trainers.py`` benchmarks this checkout even where hf_unlearn is not installed.
    sys.path.insert(0, str(REPO))

from readme_tables import update_table  # noqa: E402

import hf_unlearn  # noqa: E402
from hf_unlearn.atomic_files import atomic_write_text  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
TARGET_PER_PASS = 1.10
TARGET_NPO_PRECOMPUTED = 1.10


# ---------------------------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Expected:
    """Passes a method should make per optimizer step (one micro-batch), to check the hook counts against.

    ``policy_rows`` / ``ref_rows`` are in units of the forget batch (B sequences of ``seq_len`` tokens): IdkDPO
    runs chosen and rejected as one pass of 2B rows, so its pair pass counts once with 2 batch-equivalents.
    """

    policy_grad_passes: int
    policy_rows: float
    ref_passes: int
    ref_rows: float


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    #: ``None`` for the plain ``transformers.Trainer`` baseline.
    trainer_cls: type[Trainer] | None
    config_cls: type[TrainingArguments]
    config_kwargs: dict[str, Any]
    uses_retain: bool
    preference: bool
    expected: Expected
    what: str


def variants() -> list[Variant]:
    u = hf_unlearn
    # RMU's default rmu_layer=7 does not exist in the small default model; layer 2 keeps its "three trainable
    # down_proj below the steered layer" shape (see RMUConfig.resolved_trainable_layers).
    return [
        Variant("plain", "plain Trainer (causal LM)", None, TrainingArguments, {}, False, False,
                Expected(1, 1, 0, 0), "HF causal-LM loss on the forget batch: 1 forward+backward"),
        Variant("grad_ascent", "GradAscent", u.GradAscentTrainer, u.GradAscentConfig, {}, False, False,
                Expected(1, 1, 0, 0), "forget forward+backward (retain_loss='none')"),
        Variant("grad_diff", "GradDiff (two passes)", u.GradDiffTrainer, u.GradDiffConfig,
                {"retain_forward": "separate"}, True, False,
                Expected(2, 2, 0, 0), "forget + retain forward+backward (retain_loss='nll'), separately"),
        Variant("npo", "NPO (ref model, two passes)", u.NPOTrainer, u.NPOConfig, {"retain_forward": "separate"},
                True, False,
                Expected(2, 2, 1, 1), "forget + retain forward+backward separately, reference forward on forget"),
        Variant("grad_diff_concat", "GradDiff (default: one concatenated pass)", u.GradDiffTrainer, u.GradDiffConfig,
                {}, True, False,
                Expected(1, 2, 0, 0), "forget and retain batches in one 2B-row forward+backward"),
        Variant("npo_concat", "NPO (ref model, default: one concatenated pass)", u.NPOTrainer, u.NPOConfig,
                {}, True, False,
                Expected(1, 2, 1, 1), "forget and retain in one 2B-row forward+backward, reference forward on forget"),
        Variant("npo_precomputed", "NPO (precomputed ref)", u.NPOTrainer, u.NPOConfig,
                {"precompute_ref_log_probs": True}, True, False,
                Expected(1, 2, 0, 0), "forget + retain in one forward+backward; ref log-probs computed in advance"),
        Variant("npo_precomputed_no_retain", "NPO (precomputed ref, no retain)", u.NPOTrainer, u.NPOConfig,
                {"precompute_ref_log_probs": True, "retain_loss": "none"}, False, False,
                Expected(1, 1, 0, 0), "forget forward+backward only: same pass structure as GradAscent"),
        Variant("simnpo", "SimNPO", u.SimNPOTrainer, u.SimNPOConfig, {}, True, False,
                Expected(1, 2, 0, 0), "forget + retain in one forward+backward, no reference"),
        Variant("idk_dpo", "IdkDPO (ref model)", u.IdkDPOTrainer, u.IdkDPOConfig, {}, True, True,
                Expected(2, 3, 1, 2), "chosen+rejected as one 2B-row forward+backward, retain forward+backward, "
                "reference forward on the 2B rows"),
        Variant("rmu", "RMU (layer 2)", u.RMUTrainer, u.RMUConfig, {"rmu_layer": 2}, True, False,
                Expected(2, 2, 1, 1), "forget + retain forward (full model, hook at layer 2) + backward through "
                "layers 0-2 only; reference forward on retain"),
        Variant("undial", "UNDIAL (ref model)", u.UNDIALTrainer, u.UNDIALConfig, {}, False, False,
                Expected(1, 1, 1, 1), "forget forward+backward, reference forward on forget (retain_loss='none')"),
        Variant("wga", "WGA", u.WGATrainer, u.WGAConfig, {}, True, False,
                Expected(1, 2, 0, 0), "forget + retain in one forward+backward"),
        Variant("satimp", "SatImp", u.SatImpTrainer, u.SatImpConfig, {}, True, False,
                Expected(1, 2, 0, 0), "forget + retain in one forward+backward"),
    ]


# ---------------------------------------------------------------------------------------------- model and data


def build_tokenizer(vocab_words: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer built in memory: one whitespace word = one token, so text length = token count."""
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    words = [f"w{i}" for i in range(vocab_words)]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def build_llama(tokenizer: PreTrainedTokenizerBase, opts: argparse.Namespace) -> LlamaForCausalLM:
    torch.manual_seed(opts.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=opts.hidden, intermediate_size=opts.intermediate,
        num_hidden_layers=opts.layers, num_attention_heads=opts.heads, num_key_value_heads=opts.kv_heads,
        max_position_embeddings=max(opts.seq_len, 128), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def word_pool(tokenizer: PreTrainedTokenizerBase, size: int) -> list[str]:
    """Words that are one token each, so a text of n words is (about) n tokens."""
    vocab = tokenizer.get_vocab()
    if "w0" in vocab:
        return [f"w{i}" for i in range(size)]
    # A BPE vocabulary (SmolLM2): tokens that are a leading-space marker plus letters decode to " word".
    words = sorted({t[1:] for t in vocab if t.startswith("Ġ") and t[1:].isalpha() and len(t) > 3})
    return words[:size]


def texts(rng: random.Random, pool: list[str], n: int, length: int) -> list[str]:
    return [" ".join(rng.choice(pool) for _ in range(length)) for _ in range(n)]


@dataclass
class Data:
    forget: list[str]
    retain: list[str]
    pairs: list[dict[str, str]]
    plain: Dataset


def build_data(tokenizer: PreTrainedTokenizerBase, opts: argparse.Namespace) -> Data:
    rng = random.Random(opts.seed)
    pool = word_pool(tokenizer, opts.vocab)
    # One epoch covers a whole timed run, so no run crosses an epoch boundary (which re-creates the iterator).
    n = opts.batch_size * (opts.warmup + opts.steps + 1)
    forget = texts(rng, pool, n, opts.seq_len)
    retain = texts(rng, pool, n, opts.seq_len)
    half = opts.seq_len // 2
    # Prompt + answer = seq_len tokens for both sides, so each side costs what one forget sequence costs.
    pairs = [
        {"prompt": p, "chosen": c, "rejected": r}
        for p, c, r in zip(
            texts(rng, pool, n, half),
            texts(rng, pool, n, opts.seq_len - half),
            texts(rng, pool, n, opts.seq_len - half),
        )
    ]
    plain = Dataset.from_dict({"text": forget}).map(
        lambda row: tokenizer(row["text"], truncation=True, max_length=opts.seq_len), remove_columns=["text"]
    )
    return Data(forget, retain, pairs, plain)


# ---------------------------------------------------------------------------------------------- instrumentation


class StepTimer(TrainerCallback):
    """Timestamps of every optimizer step; ``active`` is true while a step computes (for the pass counters).

    ``abort_above``: stop the run after two consecutive steps whose compute time exceeds it. Such a run is
    disturbed anyway (see ``mark_disturbed``) and under heavy foreign load each of its steps can take 20x the
    normal time, which would eat the time budget that the repair runs need.
    """

    def __init__(self) -> None:
        self.begin: list[float] = []
        self.end: list[float] = []
        self.cpu_end: list[float] = []
        self.active = False
        self.abort_above: float | None = None
        self.aborted = False
        self._slow_in_a_row = 0

    def reset(self, abort_above: float | None = None) -> None:
        self.begin, self.end, self.cpu_end, self.active = [], [], [], False
        self.abort_above, self.aborted, self._slow_in_a_row = abort_above, False, 0

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object
    ) -> None:
        self.begin.append(time.perf_counter())
        self.active = True

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object
    ) -> TrainerControl:
        self.end.append(time.perf_counter())
        # Process CPU time (all threads): less inflated than wall time when other jobs share the cores.
        self.cpu_end.append(time.process_time())
        self.active = False
        if self.abort_above is not None:
            slow = self.end[-1] - self.begin[-1] > self.abort_above
            self._slow_in_a_row = self._slow_in_a_row + 1 if slow else 0
            if self._slow_in_a_row >= 2:
                self.aborted = True
                control.should_training_stop = True
        return control


class PassCounter:
    """Counts forward calls of one module while a step is running (so precomputation before training is not
    counted), split by whether autograd records them (a pass that will be back-propagated) or not."""

    def __init__(self, module: nn.Module, timer: StepTimer, batch_tokens: int) -> None:
        self.timer = timer
        self.batch_tokens = batch_tokens
        self.grad_passes = 0
        self.nograd_passes = 0
        self.grad_rows = 0.0
        self.nograd_rows = 0.0
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not self.timer.active:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        equivalents = ids.numel() / self.batch_tokens if torch.is_tensor(ids) else float("nan")
        if torch.is_grad_enabled():
            self.grad_passes += 1
            self.grad_rows += equivalents
        else:
            self.nograd_passes += 1
            self.nograd_rows += equivalents

    def remove(self) -> None:
        self.handle.remove()


def base_module(model: nn.Module) -> nn.Module:
    """The ``PreTrainedModel`` under accelerate's wrappers: the module whose forward the trainers call."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


# ---------------------------------------------------------------------------------------------- building


def common_args(opts: argparse.Namespace, max_steps: int) -> dict[str, Any]:
    return {
        "output_dir": str(Path(tempfile.gettempdir()) / "hf_unlearn_bench"),
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_strategy": "steps",
        # Never log inside the timed steps: logging gathers metrics and prints, which is not training work.
        "logging_steps": 10**6,
        "disable_tqdm": True,
        "per_device_train_batch_size": opts.batch_size,
        "per_device_eval_batch_size": opts.batch_size,
        "gradient_accumulation_steps": 1,
        "max_steps": max_steps,
        # Same optimizer work for everyone; a constant, small rate keeps gradient ascent finite for the whole run.
        "learning_rate": 1e-5,
        "lr_scheduler_type": "constant",
        "max_grad_norm": 1.0,
        "seed": opts.seed,
        "data_seed": opts.seed,
        "dataloader_num_workers": 0,
        "bf16": False,
    }


def build_trainer(
    variant: Variant, model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: Data, opts: argparse.Namespace,
    timer: StepTimer, max_steps: int,
) -> Trainer:
    kwargs = common_args(opts, max_steps)
    if variant.trainer_cls is None:
        trainer: Trainer = Trainer(
            model=model,
            args=TrainingArguments(**kwargs),
            train_dataset=data.plain,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
            processing_class=tokenizer,
            callbacks=[timer],
        )
    else:
        config = variant.config_cls(**kwargs, max_length=opts.seq_len, **variant.config_kwargs)
        trainer = variant.trainer_cls(
            model,
            config,
            train_dataset=data.pairs if variant.preference else data.forget,
            retain_dataset=data.retain if variant.uses_retain else None,
            processing_class=tokenizer,
            callbacks=[timer],
        )
    # The printer would print a summary line after every timed run.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


@dataclass
class Run:
    """One timed ``train()`` call of one variant (its post-warm-up steps)."""

    round: int
    repair: bool
    step_s: list[float]
    compute_s: list[float]
    cpu_s: list[float]
    load_1min: float
    aborted: bool
    disturbed: bool = False

    @property
    def median(self) -> float:
        return statistics.median(self.step_s) if self.step_s else float("inf")


@dataclass
class Entry:
    variant: Variant
    trainer: Trainer
    timer: StepTimer
    runs: list[Run] = field(default_factory=list)
    counts: dict[str, float] = field(default_factory=dict)
    #: compute time of the untimed first step, an upper bound of a normal step.
    best_compute: float = float("inf")

    def clean_runs(self) -> list[Run]:
        return [run for run in self.runs if not run.disturbed]

    def pooled(self, attribute: str, clean: bool = True) -> list[float]:
        return [x for run in (self.clean_runs() if clean else self.runs) for x in getattr(run, attribute)]


def run_steps(entry: Entry, max_steps: int, abort_above: float | None = None) -> None:
    entry.trainer.args.max_steps = max_steps
    entry.timer.reset(abort_above)
    gc.collect()
    entry.trainer.train()


def timed_run(entry: Entry, opts: argparse.Namespace, round_index: int, repair: bool) -> Run:
    # The fastest step compute seen so far for this variant (the untimed first step included) sets the bar.
    best = min([entry.best_compute, *entry.pooled("compute_s", clean=False)])
    run_steps(entry, opts.warmup + opts.steps, abort_above=opts.abort_factor * best)
    ends, begins, cpu = entry.timer.end, entry.timer.begin, entry.timer.cpu_end
    # Interval k needs on_step_end of step k-1, so the first timed step is step `warmup` (0-based).
    kept = range(opts.warmup, len(ends))
    run = Run(
        round=round_index,
        repair=repair,
        step_s=[ends[k] - ends[k - 1] for k in kept],
        compute_s=[ends[k] - begins[k] for k in kept],
        cpu_s=[cpu[k] - cpu[k - 1] for k in kept],
        load_1min=os.getloadavg()[0],
        aborted=entry.timer.aborted,
    )
    entry.runs.append(run)
    return run


def mark_disturbed(entry: Entry, factor: float) -> None:
    """Flag runs far slower than the variant's best run.

    On a shared machine another job can slow a whole run 2-20x (oversubscribed OpenMP threads spin); a
    method's own cost cannot vary that much between identical runs, so such runs measure the neighbour, not
    the method. They stay in the JSON, flagged, and are excluded from the medians.
    """
    best = min(run.median for run in entry.runs)
    for run in entry.runs:
        run.disturbed = run.aborted or run.median > factor * best


def count_passes(entry: Entry, batch_tokens: int) -> None:
    """One untimed step with pass counters; doubles as warm-up (allocators, optimizer state, precomputation)."""
    trainer = entry.trainer
    policy = PassCounter(base_module(trainer.model), entry.timer, batch_tokens)
    ref_model = getattr(trainer, "ref_model", None)
    reference = PassCounter(base_module(ref_model), entry.timer, batch_tokens) if ref_model is not None else None
    captured = io.StringIO()
    try:
        # The reference precomputation draws a tqdm bar with an explicit disable=False (no flag or environment
        # variable turns it off); keep it out of the report, but show it if the step fails.
        with contextlib.redirect_stderr(captured):
            run_steps(entry, 1)
        entry.best_compute = entry.timer.end[0] - entry.timer.begin[0]
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise
    finally:
        policy.remove()
        if reference is not None:
            reference.remove()
    # A precomputing trainer drops its reference model in train(); a reference pass would then show up as a
    # policy no-grad pass, never silently disappear.
    entry.counts = {
        "policy_grad_passes": policy.grad_passes,
        "policy_grad_batch_equivalents": policy.grad_rows,
        "policy_nograd_passes": policy.nograd_passes,
        "ref_passes": reference.grad_passes + reference.nograd_passes if reference else 0,
        "ref_batch_equivalents": reference.grad_rows + reference.nograd_rows if reference else 0.0,
    }


# ---------------------------------------------------------------------------------------------- reporting


def machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(["git", "status", "--porcelain", "hf_unlearn"], cwd=REPO, capture_output=True, text=True)
            .stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hf_unlearn": hf_unlearn.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit,
        "hf_unlearn_has_uncommitted_changes": dirty,
    }


def paired_ratio(numerator: Entry, denominator: Entry) -> float | None:
    """Median over rounds of (run median of ``numerator`` / run median of ``denominator``) in the same round.

    Both runs of a pair ran within seconds of each other, so load that drifts over minutes cancels out; the
    pooled medians cannot do that. Only rounds where both runs are clean count.
    """
    clean = {run.round: run.median for run in denominator.clean_runs() if run.step_s}
    ratios = [run.median / clean[run.round] for run in numerator.clean_runs() if run.step_s and run.round in clean]
    return statistics.median(ratios) if ratios else None


def summarize(entries: list[Entry]) -> dict[str, dict[str, Any]]:
    plain = next(e for e in entries if e.variant.key == "plain")
    plain_median = statistics.median(plain.pooled("step_s"))
    plain_all = statistics.median(plain.pooled("step_s", clean=False))
    results: dict[str, dict[str, Any]] = {}
    for entry in entries:
        steps = entry.pooled("step_s")
        median = statistics.median(steps)
        compute = statistics.median(entry.pooled("compute_s"))
        passes = entry.counts["policy_grad_passes"]
        ratio = median / plain_median
        expected = entry.variant.expected
        results[entry.variant.key] = {
            "label": entry.variant.label,
            "what_a_step_does": entry.variant.what,
            "seconds_per_step_median": median,
            "seconds_per_step_min": min(steps),
            "seconds_per_step_max": max(steps),
            "compute_seconds_median": compute,
            "data_and_loop_seconds_median": median - compute,
            "cpu_seconds_per_step_median": statistics.median(entry.pooled("cpu_s")),
            "steps_timed": len(steps),
            "ratio_to_plain": ratio,
            "ratio_to_plain_paired_rounds": paired_ratio(entry, plain),
            "ratio_to_plain_min_based": min(steps) / min(plain.pooled("step_s")),
            "ratio_to_plain_all_runs": statistics.median(entry.pooled("step_s", clean=False)) / plain_all,
            "runs": [
                {
                    "round": run.round,
                    "repair": run.repair,
                    "median_s": run.median,
                    "disturbed": run.disturbed,
                    "aborted": run.aborted,
                    "load_1min_after": run.load_1min,
                }
                for run in entry.runs
            ],
            **entry.counts,
            "ratio_per_policy_fb_pass": ratio / passes if passes else None,
            "ratio_per_policy_fb_batch_equivalent": (
                ratio / entry.counts["policy_grad_batch_equivalents"]
                if entry.counts["policy_grad_batch_equivalents"] else None
            ),
            "counts_match_expected": (
                passes == expected.policy_grad_passes
                and abs(entry.counts["policy_grad_batch_equivalents"] - expected.policy_rows) < 1e-6
                and entry.counts["ref_passes"] == expected.ref_passes
                and abs(entry.counts["ref_batch_equivalents"] - expected.ref_rows) < 1e-6
                and entry.counts["policy_nograd_passes"] == 0
            ),
            "expected_counts": {
                "policy_grad_passes": expected.policy_grad_passes,
                "policy_grad_batch_equivalents": expected.policy_rows,
                "ref_passes": expected.ref_passes,
                "ref_batch_equivalents": expected.ref_rows,
            },
        }
    return results


def _target(definition: str, value: float, paired: float | None, limit: float | None) -> dict[str, Any]:
    return {
        "definition": definition,
        "value": value,
        # The same quotient from round-paired runs (see paired_ratio): when the two verdicts differ, load on
        # the machine drifted too much during the run to decide, and the run should be repeated.
        "value_paired_rounds": paired,
        "limit": limit,
        "met": None if limit is None else value <= limit,
        "met_paired_rounds": None if limit is None or paired is None else paired <= limit,
    }


def targets(results: dict[str, dict[str, Any]], entries: list[Entry]) -> dict[str, dict[str, Any]]:
    by_key = {entry.variant.key: entry for entry in entries}

    def seconds(key: str) -> float:
        return results[key]["seconds_per_step_median"]

    def paired(key: str, reference: str, passes: int = 1) -> float | None:
        ratio = paired_ratio(by_key[key], by_key[reference])
        return None if ratio is None else ratio / passes

    out: dict[str, dict[str, Any]] = {}
    for key in ("grad_ascent", "grad_diff"):
        passes = results[key]["policy_grad_passes"]
        out[f"{key}_per_fb_pass_vs_plain"] = _target(
            f"(median s/step of {key} / median s/step of plain) / {passes} policy forward-backward pass(es)",
            seconds(key) / seconds("plain") / passes,
            paired(key, "plain", passes),
            TARGET_PER_PASS,
        )
    out["npo_precomputed_vs_grad_ascent"] = _target(
        "median s/step of NPO with precompute_ref_log_probs=True and retain_loss='none' / median s/step of "
        "GradAscent: the same pass structure (one forget forward+backward, no reference pass), so this is the "
        "like-for-like reading of 'precomputed NPO costs at most 1.10x GradAscent'",
        seconds("npo_precomputed_no_retain") / seconds("grad_ascent"),
        paired("npo_precomputed_no_retain", "grad_ascent"),
        TARGET_NPO_PRECOMPUTED,
    )
    out["npo_precomputed_default_vs_grad_diff"] = _target(
        "median s/step of NPO with precompute_ref_log_probs=True and its default retain_loss='nll' / median "
        "s/step of GradDiff with its defaults (both: forget + retain in one forward+backward): the like-for-like "
        "check with NPO's defaults",
        seconds("npo_precomputed") / seconds("grad_diff_concat"),
        paired("npo_precomputed", "grad_diff_concat"),
        TARGET_NPO_PRECOMPUTED,
    )
    out["npo_precomputed_default_vs_grad_ascent_raw"] = _target(
        "median s/step of NPO (precomputed, default retain_loss='nll') / median s/step of GradAscent. "
        "Informational, not a target: NPO's default adds a retain forward+backward that GradAscent does not "
        "have, so about 2x is expected",
        seconds("npo_precomputed") / seconds("grad_ascent"),
        paired("npo_precomputed", "grad_ascent"),
        None,
    )
    for key, reference in (("grad_diff_concat", "grad_diff"), ("npo_concat", "npo")):
        out[f"{key}_vs_{reference}"] = _target(
            f"median s/step of {key} / median s/step of {reference}: one concatenated forget+retain pass against "
            "two (informational: below 1 means the concatenated pass is faster here)",
            seconds(key) / seconds(reference),
            paired(key, reference),
            None,
        )
    return out


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| variant | policy fwd+bwd passes (batch-equiv.) | ref fwd passes (batch-equiv.) | s/step (median) "
        "| ratio to plain | ratio per policy pass | compute s (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results.values():
        per_pass = r["ratio_per_policy_fb_pass"]
        flag = "" if r["counts_match_expected"] else " (!)"
        lines.append(
            f"| {r['label']} | {r['policy_grad_passes']} ({r['policy_grad_batch_equivalents']:g}){flag} "
            f"| {r['ref_passes']} ({r['ref_batch_equivalents']:g}) | {r['seconds_per_step_median']:.4f} "
            f"| {r['ratio_to_plain']:.3f} | {per_pass:.3f} | {r['compute_seconds_median']:.4f} |"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def targets_markdown(target_results: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, t in target_results.items():
        if t["limit"] is None:
            lines.append(f"- {name}: {t['value']:.3f} (informational, not a target)")
        else:
            verdict = "met" if t["met"] else "MISSED"
            lines.append(
                f"- {name}: {t['value']:.3f} (limit {t['limit']:.2f}) -> **{verdict}** "
                f"(round-paired: {_fmt(t['value_paired_rounds'])})"
            )
    return "\n".join(lines)


def update_readme(table: str, targets_md: str, config_line: str) -> None:
    update_table("trainers", f"{config_line}\n\n{table}\n\nTargets:\n\n{targets_md}")


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~1 minute smoke run (fewer rounds and steps)")
    parser.add_argument("--model", choices=["llama", "smollm2"], default="llama")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 6, quick 3)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 8, quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="discarded steps per run (default 2, quick 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=4096, help="words of the in-memory tokenizer")
    parser.add_argument(
        "--disturbed-factor", type=float, default=1.5,
        help="a run whose median is this many times the variant's best run median is flagged and replaced",
    )
    parser.add_argument(
        "--abort-factor", type=float, default=3.0,
        help="stop a run after two consecutive steps slower than this many times the variant's fastest step",
    )
    parser.add_argument("--budget-s", type=float, default=None, help="no repair runs start after this (s)")
    parser.add_argument("--only", nargs="*", default=None, help="variant keys to run (plain is always run)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite bench/README.md")
    opts = parser.parse_args(argv)
    # Many short rounds rather than few long ones: on a shared machine a burst of foreign load then spoils a
    # few steps of every variant instead of all steps of one.
    opts.rounds = opts.rounds or (3 if opts.quick else 6)
    opts.steps = opts.steps or (3 if opts.quick else 8)
    opts.warmup = opts.warmup if opts.warmup is not None else (1 if opts.quick else 2)
    # Leaves room for the last repair pass to finish inside the ~5 min (quick: ~1 min) the run is meant to take.
    opts.budget_s = opts.budget_s or (60.0 if opts.quick else 240.0)
    if opts.warmup < 1:
        # The first step's interval has no previous on_step_end to start from.
        parser.error("--warmup must be at least 1")
    if opts.output is None:
        opts.output = BENCH_DIR / "results" / ("trainers_quick.json" if opts.quick else "trainers.json")
    return opts


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    torch.set_num_threads(opts.threads)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.set_seed(opts.seed)

    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    if load_at_start > opts.threads:
        print(
            f"warning: 1-minute load average is {load_at_start:.1f} on {os.cpu_count()} cores before starting; "
            "timings will be noisy (disturbed runs are flagged and re-run)",
            flush=True,
        )
    if opts.model == "smollm2":
        from hf_unlearn.smollm2 import load_smollm2

        base, tokenizer = load_smollm2()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        tokenizer = build_tokenizer(opts.vocab)
        base = build_llama(tokenizer, opts)
    data = build_data(tokenizer, opts)
    batch_tokens = opts.batch_size * opts.seq_len
    selected = [v for v in variants() if v.key == "plain" or opts.only is None or v.key in opts.only]
    if opts.model == "smollm2":
        selected = [
            Variant(v.key, v.label.replace("layer 2", "layer 7"), v.trainer_cls, v.config_cls,
                    {**v.config_kwargs, "rmu_layer": 7}, v.uses_retain, v.preference, v.expected, v.what)
            if v.key == "rmu" else v
            for v in selected
        ]

    max_steps = opts.warmup + opts.steps
    entries: list[Entry] = []
    for variant in selected:
        timer = StepTimer()
        # A fresh copy each: every variant starts from identical weights and owns its own optimizer state.
        trainer = build_trainer(variant, copy.deepcopy(base), tokenizer, data, opts, timer, max_steps)
        entry = Entry(variant, trainer, timer)
        count_passes(entry, batch_tokens)
        entries.append(entry)
        print(f"built {variant.key}: {entry.counts}", flush=True)
    setup_s = time.perf_counter() - started

    for round_index in range(opts.rounds):
        # Rotate the start so that no variant always runs right after the same neighbour.
        shift = round_index % len(entries)
        for entry in entries[shift:] + entries[:shift]:
            timed_run(entry, opts, round_index, repair=False)
        print(f"round {round_index + 1}/{opts.rounds} done ({time.perf_counter() - started:.0f} s)", flush=True)

    # Replace disturbed runs with fresh ones (still interleaved) until every variant has `rounds` clean runs,
    # within the time budget.
    repairs = 0
    while repairs < opts.rounds and time.perf_counter() - started < opts.budget_s:
        for entry in entries:
            mark_disturbed(entry, opts.disturbed_factor)
        # Only runs with timed steps count: an aborted run may have none.
        short = [entry for entry in entries if sum(bool(r.step_s) for r in entry.clean_runs()) < opts.rounds]
        if not short:
            break
        for entry in short:
            timed_run(entry, opts, opts.rounds + repairs, repair=True)
        repairs += 1
        print(f"repair pass {repairs}: re-ran {[e.variant.key for e in short]} (disturbed runs)", flush=True)
    for entry in entries:
        mark_disturbed(entry, opts.disturbed_factor)

    results = summarize(entries)
    lengths = [len(ids) for ids in data.plain["input_ids"]]
    target_results = targets(results, entries) if len(entries) == len(variants()) else {}
    report = {
        "benchmark": "hf_unlearn trainers: optimizer-step time relative to a plain transformers.Trainer step",
        "machine": machine_info(torch.get_num_threads()),
        "config": {
            "mode": "quick" if opts.quick else "full",
            "model": opts.model if opts.model == "smollm2" else {
                "type": "LlamaForCausalLM, random init",
                "layers": opts.layers, "hidden": opts.hidden, "intermediate": opts.intermediate,
                "heads": opts.heads, "kv_heads": opts.kv_heads, "vocab_size": len(tokenizer),
            },
            "parameters": sum(p.numel() for p in base.parameters()),
            "batch_size": opts.batch_size,
            "seq_len": opts.seq_len,
            # Checked, not assumed: equal lengths mean no padding, so every variant's batch costs the same.
            "forget_tokens_per_sequence_min_max": [min(lengths), max(lengths)],
            "rounds": opts.rounds,
            "timed_steps_per_run": opts.steps,
            "warmup_steps_per_run": opts.warmup,
            "disturbed_factor": opts.disturbed_factor,
            "abort_factor": opts.abort_factor,
            "repair_passes": repairs,
            "disturbed_runs_excluded": sum(run.disturbed for entry in entries for run in entry.runs),
            "load_average_1min_at_start": load_at_start,
            "seed": opts.seed,
            "optimizer": "AdamW (Trainer default), lr 1e-5 constant, max_grad_norm 1.0, fp32",
            "setup_seconds": setup_s,
            "total_seconds": time.perf_counter() - started,
        },
        "method": {
            "step_time": "interval between consecutive on_step_end callbacks: batch fetch + get_batch_samples "
            "(retain pairing/collation) + forward/backward + clipping + optimizer step + callbacks",
            "compute_time": "on_step_begin .. on_step_end: the same without batch fetch and get_batch_samples",
            "aggregation": "post-warm-up steps of all clean runs of all interleaved rounds pooled, median; ratios "
            "are median / median of plain. A run (one train() call of one variant) whose median exceeds "
            "disturbed_factor x the variant's best run median is flagged 'disturbed' (foreign load on a shared "
            "machine), kept in results[*].runs, excluded from the medians and replaced by a repair run. "
            "ratio_to_plain_all_runs uses every run; ratio_to_plain_paired_rounds is the median over rounds of "
            "(this variant's run median / plain's run median in the same round); ratio_to_plain_min_based uses "
            "the fastest step of each variant",
            "policy_grad_passes": "policy forward calls made with autograd on during one step (each is "
            "back-propagated: one forward-backward pass), counted by a forward pre-hook in an untimed step",
            "policy_grad_batch_equivalents": "tokens of those passes / (batch_size * seq_len)",
            "ref_passes": "reference-model forward calls (no backward) during one step; not in the per-pass "
            "denominator. Precomputed reference log-probs are computed before the first step and not timed",
            "ratio_per_policy_fb_pass": "ratio_to_plain / policy_grad_passes",
            "caveats": "RMU runs the full model forward but back-propagates only to layer rmu_layer's trainable "
            "down_proj weights; IdkDPO's pair pass has 2x the rows of the plain batch",
        },
        "results": results,
        "targets": target_results,
    }
    atomic_write_text(opts.output, json.dumps(report, indent=2) + "\n")

    table = markdown_table(results)
    targets_md = targets_markdown(target_results)
    print()
    print(table)
    print()
    print(targets_md)
    print(f"\nwrote {opts.output} in {time.perf_counter() - started:.0f} s")
    if not opts.quick and not opts.no_readme and opts.only is None:
        config_line = (
            f"{opts.model}, {report['config']['parameters'] / 1e6:.1f}M parameters, batch {opts.batch_size} x "
            f"{opts.seq_len} tokens, {torch.get_num_threads()} threads on {report['machine']['cpu']}, torch "
            f"{torch.__version__}, transformers {transformers.__version__}; {opts.rounds} rounds x {opts.steps} "
            "timed steps per variant, "
            f"{report['config']['disturbed_runs_excluded']} disturbed runs excluded, {repairs} repair pass(es). "
            "(!) after a pass count: the hook counts differ from the method's expected passes."
        )
        update_readme(table, targets_md, config_line)


if __name__ == "__main__":
    main()
