"""Worker for tests/test_distributed.py: unlearning runs, launched by torchrun (2 ranks) or plainly (1 process).

Each ``--job`` is one training run (several jobs share the processes, which saves the start-up, ~5 s per launch).
For a job NAME each rank writes ``NAME/rank{R}.json`` (world size, rank, metrics, the retain draws the trainer made,
a hash of the final weights) and ``NAME/rank{R}.pt`` (the final state dict) under ``--out``; rank 0 also writes
``NAME/initial.pt``.

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py --out DIR --job "npo --method npo"
    python tests/distributed_worker.py --out DIR --job "ga --method grad_ascent --sgd --per-device-batch 4"
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import shlex
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
sys.path.insert(1, str(TESTS.parent))

import torch  # noqa: E402
from tiny_models import FORGET_TEXTS, RETAIN_TEXTS, build_tokenizer, tiny_llama  # noqa: E402

import hf_unlearn.trainers.unlearning as base  # noqa: E402
from hf_unlearn import get_method  # noqa: E402
from hf_unlearn.data import INDEX_COLUMN, UnlearningCollator, prepare_dataset  # noqa: E402
from hf_unlearn.losses import IGNORE_INDEX  # noqa: E402

#: 8 forget examples (the 4 of conftest and 4 more in the same vocabulary), so each of 2 ranks gets 2 batches of 2.
EXTRA_FORGET = [
    "harry potter was a boy who studied at hogwarts .",
    "the boy named harry potter is a wizard .",
    "hogwarts castle is the wizard school .",
    "harry potter likes the wizard school hogwarts .",
]


METHODS = {name: get_method(name) for name in ("npo", "grad_ascent")}


def job_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="--job", add_help=False)
    parser.add_argument("name", help="sub-directory of --out for this job's files")
    parser.add_argument("--method", choices=sorted(METHODS), required=True)
    parser.add_argument("--num-forget", type=int, default=8)
    parser.add_argument("--per-device-batch", type=int, default=2)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--no-average-tokens", action="store_true", help="average_tokens_across_devices=False")
    parser.add_argument("--retain-loss", choices=("none", "nll", "kl"), default=None, help="default: the method's")
    parser.add_argument("--sgd", action="store_true", help="plain SGD, lr 0.1, constant, no clipping (exact checks)")
    parser.add_argument(
        "--retain-map", default=None, help="JSON file {forget index: retain index} that replaces the retain draw"
    )
    parser.add_argument("--precompute", action="store_true", help="precompute_ref_log_probs=True")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--find-unused", choices=("default", "true", "false"), default="default")
    return parser


def forget_nll(model, tokenizer, texts: list[str]) -> float:
    """Token-mean NLL of ``texts`` under ``model`` (the model's own unwrapped copy, no DDP)."""
    data = prepare_dataset(texts, tokenizer, "forget", max_length=None)
    batch = UnlearningCollator(tokenizer.pad_token_id)(
        [{k: row[k] for k in ("input_ids", "attention_mask", "labels")} for row in data]
    )
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    labels = batch["labels"][:, 1:]
    return float(
        torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
        )
    )


def state_hash(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_job(args: argparse.Namespace, out: Path) -> None:
    """One training run; writes ``rank{R}.json`` / ``rank{R}.pt`` (and ``initial.pt`` on rank 0) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    model = tiny_llama(tokenizer)
    forget_texts = (FORGET_TEXTS + EXTRA_FORGET)[: args.num_forget]
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    nll_before = forget_nll(model, tokenizer, forget_texts)
    model.train()

    common = dict(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=args.per_device_batch,
        gradient_accumulation_steps=args.grad_accum,
        max_steps=args.max_steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=42,
        disable_tqdm=True,
        dataloader_num_workers=0,
        average_tokens_across_devices=not args.no_average_tokens,
        precompute_ref_log_probs=args.precompute,
    )
    if args.gradient_checkpointing:
        common["gradient_checkpointing"] = True
    if args.find_unused != "default":
        common["ddp_find_unused_parameters"] = args.find_unused == "true"
    if args.sgd:
        # Deterministic plain gradient steps: the update is lr · gradient, nothing else.
        common.update(optim="sgd", learning_rate=0.1, lr_scheduler_type="constant", max_grad_norm=0)
    else:
        common.update(learning_rate=5e-3)
    if args.retain_loss is not None:
        common["retain_loss"] = args.retain_loss
    config_class, trainer_class = METHODS[args.method].config_class, METHODS[args.method].trainer_class
    config = config_class(warmup_steps=0, **common)
    kwargs = {}
    if config.retain_loss != "none":
        kwargs["retain_dataset"] = RETAIN_TEXTS
    if trainer_class.uses_reference(config):
        kwargs["ref_model"] = copy.deepcopy(model)
    trainer = trainer_class(model, config, train_dataset=forget_texts, processing_class=tokenizer, **kwargs)

    # Record what the trainer really draws: patch the name `base` calls, and check each attached retain batch.
    draws: list[dict] = []
    original_retain_indices = base.retain_indices
    retain_map = None
    if args.retain_map:
        retain_map = {int(k): int(v) for k, v in json.loads(Path(args.retain_map).read_text()).items()}

    def recording_retain_indices(forget_indices, num_retain, seed, rank, epoch):
        if retain_map is not None:
            result = [retain_map[int(i)] for i in forget_indices]
        else:
            result = original_retain_indices(forget_indices, num_retain, seed, rank, epoch)
        draws.append(
            {"forget": [int(i) for i in forget_indices], "retain": result, "seed": seed, "rank": rank, "epoch": epoch}
        )
        return result

    base.retain_indices = recording_retain_indices
    attached_ok: list[bool] = []
    batches: list[dict] = []
    original_attach = trainer._attach_retain

    def checking_attach(batch, epoch):
        batches.append({"epoch": epoch, "forget": batch[INDEX_COLUMN].tolist()})
        before = len(draws)
        result = original_attach(batch, epoch)
        if trainer.retain_dataset is not None and len(draws) > before:
            rows = trainer.retain_dataset[draws[-1]["retain"]]
            expected = UnlearningCollator(tokenizer.pad_token_id)([{"input_ids": ids} for ids in rows["input_ids"]])
            attached_ok.append(torch.equal(result["retain"]["input_ids"], expected["input_ids"]))
        return result

    trainer._attach_retain = checking_attach
    try:
        trainer.train()
    finally:
        base.retain_indices = original_retain_indices

    final_model = base.underlying_model(trainer.model)
    final = {k: v.detach().cpu().clone() for k, v in final_model.state_dict().items()}
    nll_after = forget_nll(final_model, tokenizer, forget_texts)
    rank = trainer.accelerator.process_index
    world_size = trainer.args.world_size
    dist_world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if rank == 0:
        torch.save(initial, out / "initial.pt")
    torch.save(final, out / f"rank{rank}.pt")
    forget_set = trainer.train_dataset
    record = {
        "rank": rank,
        "world_size": world_size,
        "dist_world_size": dist_world,
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "model_is_ddp": isinstance(trainer.model_wrapped, torch.nn.parallel.DistributedDataParallel),
        # The reference is a plain module on each rank (no DDP wrapper, no gradient).
        "ref_model_is_ddp": isinstance(trainer.ref_model, torch.nn.parallel.DistributedDataParallel),
        "ref_model_requires_grad": trainer.ref_model is not None
        and any(p.requires_grad for p in trainer.ref_model.parameters()),
        "seed": config.seed,
        "retain_loss": config.retain_loss,
        "has_ref_model": trainer.ref_model is not None or trainer._ref_precomputed,
        "ref_precomputed": trainer._ref_precomputed,
        "ref_logps": list(forget_set["ref_logps"]) if "ref_logps" in forget_set.column_names else None,
        "num_retain": len(trainer.retain_dataset) if trainer.retain_dataset is not None else 0,
        "draws": draws,
        "attached_retain_matches_draws": attached_ok,
        "batches": batches,
        "log_history": [
            {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in entry.items()}
            for entry in trainer.state.log_history
        ],
        "global_step": trainer.state.global_step,
        "forget_nll_before": nll_before,
        "forget_nll_after": nll_after,
        "initial_hash": state_hash(initial),
        "final_hash": state_hash(final),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--job",
        action="append",
        required=True,
        help="one run, e.g. 'npo_ddp --method npo --num-forget 8' (repeat to run several in the same processes)",
    )
    args = parser.parse_args()
    jobs = [job_parser().parse_args(shlex.split(job)) for job in args.job]
    for job in jobs:
        run_job(job, Path(args.out) / job.name)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
