"""Data-parallel training on 2 CPU processes (DDP, gloo), launched with torchrun; the work is in distributed_worker.py.

The module starts real processes: one ``python -m torch.distributed.run --nproc_per_node 2`` launch that runs every
2-rank job, then one single-process launch for the baselines (about 15 s on 2 CPU cores). Deselect it with
``-k "not distributed"`` or ``--deselect tests/test_distributed.py``.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_unlearn.data import retain_indices

WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
REPO = WORKER.parents[1]
TIMEOUT_S = 180

# Spawns 2-process gloo runs: `pytest -m "not slow"` skips them for a quick local run; CI runs everything.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
        reason="torch.distributed with the gloo backend is not available",
    ),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TORCHELASTIC_", "ACCELERATE_"))
        and k
        not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        # Every rank on the CPU (gloo), also on a machine with GPUs.
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
    )
    return env


def run_worker(out: Path, jobs: dict[str, str], nproc: int = 2) -> dict[str, list[dict]]:
    """Run the worker's ``jobs`` (name -> arguments) in one launch of ``nproc`` processes (torchrun when 2).

    Returns each job's JSON records, one per rank.
    """
    if nproc == 1:
        command = [sys.executable, str(WORKER)]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "--nnodes=1",
            "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}",
            str(WORKER),
        ]
    command += ["--out", str(out)]
    for name, job in jobs.items():
        command += ["--job", f"{name} {job}"]
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the ranks it started
        output, _ = proc.communicate()
        pytest.fail(f"{' '.join(command)} did not finish in {TIMEOUT_S} s:\n{output[-4000:]}")
    assert proc.returncode == 0, f"{' '.join(command)} exited with {proc.returncode}:\n{output[-4000:]}"
    results = {}
    for name in jobs:
        records = [json.loads((out / name / f"rank{rank}.json").read_text()) for rank in range(nproc)]
        for rank, record in enumerate(records):
            assert record["rank"] == rank
            assert record["world_size"] == record["dist_world_size"] == record["num_processes"] == nproc, record
        results[name] = records
    return results


def load_state(out: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(out / f"{name}.pt", weights_only=True)


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


SGD_STEP = "--sgd --num-forget 4 --max-steps 1"

#: Run in one torchrun launch of 2 ranks.
DDP_JOBS = {
    # NPO, explicit reference model, NLL retain term: 8 forget examples, 2 ranks x batch 2, 4 steps (2 epochs).
    "npo": "--method npo --num-forget 8 --per-device-batch 2 --max-steps 4",
    # The same NPO run with the reference log-probs precomputed (across both ranks) and the reference dropped.
    "npo_precompute": "--method npo --num-forget 8 --per-device-batch 2 --max-steps 4 --precompute",
    # NPO with a KL retain term (the reference model on every rank, on the retain batches too), 7 forget examples.
    "npo_kl": "--method npo --retain-loss kl --num-forget 7 --per-device-batch 2 --max-steps 2",
    # One SGD step of GradAscent (token-mean forget loss) on 4 examples, 2 ranks x batch 2.
    "ga": f"--method grad_ascent {SGD_STEP} --per-device-batch 2",
    # The same with a per-rank token mean: the control that shows the comparison is sensitive to the scaling.
    "ga_per_rank_mean": f"--method grad_ascent {SGD_STEP} --per-device-batch 2 --no-average-tokens",
    # One SGD step of NPO + NLL retain term, 2 ranks x batch 1 x 2 accumulation steps.
    "npo_retain": f"--method npo --retain-loss nll {SGD_STEP} --per-device-batch 1 --grad-accum 2",
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    """Every job of this module: one torchrun launch (2 ranks), then one single-process launch (baselines)."""
    out = tmp_path_factory.mktemp("distributed")
    results = run_worker(out, DDP_JOBS, nproc=2)
    # The single-process baseline of "npo_retain" replays the retain pairs the 2 ranks drew.
    draws = [d for record in results["npo_retain"] for d in record["draws"]]
    pairs = {i: r for d in draws for i, r in zip(d["forget"], d["retain"])}
    assert sorted(pairs) == [0, 1, 2, 3], pairs
    retain_map = out / "retain_map.json"
    retain_map.write_text(json.dumps(pairs))
    single_jobs = {
        "ga_single": f"--method grad_ascent {SGD_STEP} --per-device-batch 4",
        "npo_retain_single": f"--method npo --retain-loss nll {SGD_STEP} --per-device-batch 4 "
        f"--retain-map {shlex.quote(str(retain_map))}",
    }
    results.update(run_worker(out, single_jobs, nproc=1))
    return out, results


# ---------------------------------------------------------------------------------------------- NPO on 2 ranks


def test_distributed_npo_runs_as_ddp_on_two_ranks(runs):
    _, results = runs
    records = results["npo"]
    for record in records:
        assert record["world_size"] == 2
        assert record["backend"] == "gloo"
        assert record["distributed_type"].endswith("MULTI_CPU")
        assert record["model_is_ddp"]
        assert not record["ref_model_is_ddp"] and not record["ref_model_requires_grad"]
        assert record["has_ref_model"] and record["retain_loss"] == "nll"
        assert record["global_step"] == 4
    # Every epoch, the two ranks split the 8 forget examples between them.
    for epoch in (0, 1):
        seen = [
            i for record in records for batch in record["batches"] if batch["epoch"] == epoch for i in batch["forget"]
        ]
        assert sorted(seen) == list(range(8)), seen


def test_distributed_npo_weights_in_sync_and_moved(runs):
    out, results = runs
    records = results["npo"]
    initial, rank0, rank1 = (load_state(out / "npo", name) for name in ("initial", "rank0", "rank1"))
    assert records[0]["final_hash"] == records[1]["final_hash"]
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "the ranks' final weights differ"
    assert records[0]["initial_hash"] == records[1]["initial_hash"]
    assert max_abs_diff(initial, rank0) > 1e-3, "training did not change the weights"


def test_distributed_npo_retain_draws_differ_between_ranks(runs):
    _, results = runs
    records = results["npo"]
    for record in records:
        rank, draws = record["rank"], record["draws"]
        assert len(draws) == 2 * 2  # 2 micro-batches per epoch, 2 epochs
        assert record["attached_retain_matches_draws"] == [True] * len(draws)
        for draw in draws:
            assert draw["rank"] == rank and draw["seed"] == record["seed"]
            # Deterministic for a seed: the draw is the pure function of (seed, rank, epoch, forget index).
            expected = retain_indices(draw["forget"], record["num_retain"], draw["seed"], rank, draw["epoch"])
            assert draw["retain"] == expected
        # The same forget examples would have met other retain examples on the other rank.
        drawn = [i for d in draws for i in d["retain"]]
        other = 1 - rank
        on_other_rank = [
            i for d in draws for i in retain_indices(d["forget"], record["num_retain"], d["seed"], other, d["epoch"])
        ]
        assert drawn != on_other_rank
    assert [d["retain"] for d in records[0]["draws"]] != [d["retain"] for d in records[1]["draws"]]


def test_distributed_npo_losses_finite_and_forget_nll_rises(runs):
    _, results = runs
    records = results["npo"]
    steps = [[entry for entry in record["log_history"] if "forget_loss" in entry] for record in records]
    for record, logged in zip(records, steps):
        assert len(logged) == 4
        for entry in logged:
            for key in ("loss", "forget_loss", "retain_loss", "forget_nll"):
                assert isinstance(entry[key], float) and math.isfinite(entry[key]), (key, entry)
        assert record["forget_nll_after"] > record["forget_nll_before"] + 0.1, record
    # Logged metrics are gathered across ranks: both ranks log the same values.
    assert steps[0] == steps[1]
    assert records[0]["forget_nll_after"] == records[1]["forget_nll_after"]


def test_distributed_precomputed_reference_matches_live_reference(runs):
    out, results = runs
    for record in results["npo_precompute"]:
        assert record["ref_precomputed"] and len(record["ref_logps"]) == 8
        assert all(math.isfinite(x) for x in record["ref_logps"])
    assert results["npo_precompute"][0]["ref_logps"] == results["npo_precompute"][1]["ref_logps"]
    live = load_state(out / "npo", "rank0")
    for rank in (0, 1):
        assert max_abs_diff(live, load_state(out / "npo_precompute", f"rank{rank}")) < 1e-5


def test_distributed_npo_with_kl_retain_term(runs):
    out, results = runs
    records = results["npo_kl"]
    assert records[0]["final_hash"] == records[1]["final_hash"]
    assert max_abs_diff(load_state(out / "npo_kl", "initial"), load_state(out / "npo_kl", "rank0")) > 1e-3
    for record in records:
        assert record["retain_loss"] == "kl" and record["global_step"] == 2
        logged = [entry for entry in record["log_history"] if "retain_loss" in entry]
        assert len(logged) == 2 and all(math.isfinite(entry["retain_loss"]) for entry in logged)


# ------------------------------------------------------------- loss normalisation over the global batch


def test_distributed_step_equals_single_process_step(runs):
    """GradAscent (token-mean forget loss): one SGD step of 2 ranks x batch 2 on 4 examples == 1 process x batch 4.

    Both steps cover the same 4 examples, so with the loss normalised over the global batch's tokens
    (``average_tokens_across_devices``) and DDP's gradient average the updates match. The forget examples have
    different lengths, so a per-rank token mean (average_tokens_across_devices=False) gives another update: that
    control shows the comparison is sensitive to the scaling.
    """
    out, results = runs
    single, ddp = results["ga_single"], results["ga"]
    assert sorted(single[0]["batches"][0]["forget"]) == [0, 1, 2, 3]
    assert sorted(i for record in ddp for i in record["batches"][0]["forget"]) == [0, 1, 2, 3]

    reference = load_state(out / "ga_single", "rank0")
    assert max_abs_diff(load_state(out / "ga_single", "initial"), reference) > 1e-2
    for rank in (0, 1):
        assert max_abs_diff(reference, load_state(out / "ga", f"rank{rank}")) < 1e-6
    assert ddp[0]["log_history"][0]["loss"] == pytest.approx(single[0]["log_history"][0]["loss"], abs=1e-5)
    # Control: the mean of per-rank token means is not the global token mean.
    assert max_abs_diff(reference, load_state(out / "ga_per_rank_mean", "rank0")) > 1e-5


def test_distributed_retain_term_and_accumulation_match_single_process(runs):
    """NPO + NLL retain term, 2 ranks x batch 1 x 2 accumulation steps == 1 process x batch 4, same pairing.

    The retain pairing depends on the rank, so the single-process run replays the pairs the 2 ranks drew
    (``--retain-map``); the NPO term (per sequence, through the reference model) and the retain term (per token)
    must then give the same update.
    """
    out, results = runs
    single, ddp = results["npo_retain_single"], results["npo_retain"]
    assert single[0]["has_ref_model"] and ddp[0]["has_ref_model"]
    assert [len(record["batches"]) for record in ddp] == [2, 2]  # 2 micro-batches of 1 per rank
    reference = load_state(out / "npo_retain_single", "rank0")
    assert max_abs_diff(load_state(out / "npo_retain_single", "initial"), reference) > 1e-2
    for rank in (0, 1):
        assert max_abs_diff(reference, load_state(out / "npo_retain", f"rank{rank}")) < 1e-6
    assert ddp[0]["log_history"][0]["loss"] == pytest.approx(single[0]["log_history"][0]["loss"], abs=1e-4)
