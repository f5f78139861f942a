"""``hf-unlearn``: every subcommand in-process on tiny models saved to tmp folders, and bad input in one line."""

from __future__ import annotations

import csv
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_models import FORGET_TEXTS, RETAIN_TEXTS, build_tokenizer, tiny_llama  # noqa: E402
from transformers import AutoModelForCausalLM, OPTConfig, OPTForCausalLM  # noqa: E402

from hf_unlearn.cli import build_parser, main  # noqa: E402
from hf_unlearn.concepts import load_concept_vectors  # noqa: E402

QUESTIONS = ["who studied at hogwarts ?", "what school is the wizard school ?", "who is a wizard boy ?"]
QUIET = ["--use_cpu", "--save_strategy", "no", "--disable_tqdm", "true"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tokenizer = build_tokenizer()
    model = tiny_llama(tokenizer, hidden=32)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    opt = OPTConfig(vocab_size=len(tokenizer), hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                    max_position_embeddings=64, word_embed_proj_dim=16)
    OPTForCausalLM(opt).save_pretrained(root / "opt")
    tokenizer.save_pretrained(root / "opt")
    (root / "forget.json").write_text(json.dumps([{"text": t} for t in FORGET_TEXTS]))
    (root / "retain.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in RETAIN_TEXTS))
    with open(root / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["question", "chosen", "rejected"])
        writer.writeheader()
        writer.writerow({"question": "who studied at hogwarts ?", "chosen": " i don't know .",
                         "rejected": " harry potter ."})
        writer.writerow({"question": "where is hogwarts ?", "chosen": " i don't know .",
                         "rejected": " the wizard school ."})
    pq.write_table(pa.Table.from_pylist([{"text": t} for t in RETAIN_TEXTS]), root / "retain.parquet")
    (root / "questions.txt").write_text("\n".join(QUESTIONS) + "\n")
    qa = [{"question": "who studied at hogwarts ?", "answer": "harry potter ."},
          {"question": "where is hogwarts ?", "answer": "the wizard school ."}]
    (root / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in qa))
    (root / "bad_columns.json").write_text(json.dumps([{"foo": "bar"}]))
    (root / "texts.txt").write_text("\n".join(FORGET_TEXTS + RETAIN_TEXTS))
    return root


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def unlearned(files):
    """The NPO-unlearned model, shared by audit, dissect and evaluate."""
    out = files / "npo"
    code = main(["unlearn", "--model", str(files / "model"), "--method", "npo", "--forget", str(files / "forget.json"),
                 "--retain", str(files / "retain.jsonl"), "--output-dir", str(out), "--max_steps", "3",
                 "--learning-rate", "1e-2", *QUIET])
    assert code == 0
    return out


@pytest.mark.parametrize("command", [["unlearn"], ["locate"], ["audit"], ["dissect"], ["evaluate"], ["early-exit"],
                                     ["early-exit", "train"], ["early-exit", "calibrate"], ["early-exit", "generate"],
                                     ["early-exit", "bench"]])
def test_every_subcommand_has_help_with_examples(command, capsys):
    code, out, _ = run([*command, "--help"], capsys)
    assert code == 0 and "examples:" in out and "hf-unlearn" in out


def test_parser_lists_the_subcommands():
    choices = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert set(choices) == {"unlearn", "locate", "audit", "dissect", "evaluate", "early-exit", "push", "demo"}


def test_list_methods_and_help_config(capsys):
    code, out, _ = run(["unlearn", "--list-methods"], capsys)
    assert code == 0 and "| npo | NPOTrainer |" in out and "| idk_dpo | IdkDPOTrainer | preference" in out
    code, out, _ = run(["unlearn", "--method", "rmu", "--help-config"], capsys)
    assert code == 0 and "--steering_coeff" in out and "--learning_rate" in out


def test_unlearn_trains_saves_and_writes_json(files, unlearned):
    summary = json.loads((unlearned / "unlearn.json").read_text())
    assert summary["method"] == "npo" and summary["forget"]["rows"] == len(FORGET_TEXTS)
    assert summary["config_overrides"]["max_steps"] == 3 and summary["uses_reference"] is True
    assert any("forget_loss" in entry for entry in summary["log_history"])
    before = AutoModelForCausalLM.from_pretrained(files / "model")
    after = AutoModelForCausalLM.from_pretrained(unlearned)
    assert any(not torch.equal(p, q) for p, q in zip(before.parameters(), after.parameters()))


def test_unlearn_preference_from_csv_with_parquet_retain(files, capsys):
    out = files / "idk"
    code, stdout, _ = run(["unlearn", "--model", files / "model", "--method", "idk-dpo", "--forget",
                           files / "pairs.csv", "--retain", files / "retain.parquet", "--rename-columns",
                           "question=prompt", "--output-dir", out, "--max-steps", "2", *QUIET], capsys)
    assert code == 0, stdout
    assert "idk_dpo: 2 steps on 2 forget rows" in stdout and "wrote" in stdout
    assert json.loads((out / "unlearn.json").read_text())["retain"]["rows"] == len(RETAIN_TEXTS)


def test_unlearn_concept_mode(files, capsys):
    out = files / "concept"
    code, stdout, _ = run(["unlearn", "--model", files / "model", "--concept", "Harry Potter", "--questions",
                           files / "questions.txt", "--method", "grad_diff", "--output-dir", out, "--max_steps", "2",
                           "--max-new-tokens", "3", "--use_cpu"], capsys)
    assert code == 0
    data = json.loads((out / "unlearn_concept.json").read_text())
    assert [r["question"] for r in data["forget"]] == QUESTIONS and data["method"] == "grad_diff"
    assert data["config"]["steps"] == 2 and len(data["retain"]) >= 50
    assert "| question | before | after |" in stdout
    assert (out / "config.json").exists()


def test_locate_then_audit(files, unlearned, capsys):
    out = files / "locate"
    code, stdout, _ = run(["locate", "--model", files / "model", "--concept", "Harry Potter", "--questions",
                           files / "qa.jsonl", "--text", files / "texts.txt", "--top-n", "3", "--output-dir", out],
                          capsys)
    assert code == 0 and "| rank | layer | dim | score | top tokens |" in stdout
    vectors = load_concept_vectors(out / "concept_vectors.json")
    assert len(vectors) == 3 and all(v.concept == "Harry Potter" for v in vectors)
    # Without --top-n the set size is chosen by the library's rule, from 10, 20, 40 and 80.
    code, _, _ = run(["locate", "--model", files / "model", "--concept", "Harry Potter", "--questions",
                      files / "qa.jsonl", "--output-dir", files / "locate_auto"], capsys)
    assert code == 0 and len(load_concept_vectors(files / "locate_auto" / "concept_vectors.json")) in (10, 20, 40, 80)

    code, stdout, _ = run(["audit", "--original", files / "model", "--unlearned", unlearned, "--vectors",
                           out / "concept_vectors.json", "--output-dir", files / "audit"], capsys)
    assert code == 0 and "mean cosine" in stdout
    audit = json.loads((files / "audit" / "audit.json").read_text())
    assert len(audit["vectors"]) == 3 and audit["summary"]["mean_cosine_similarity"] < 1.0
    code, _, _ = run(["audit", "--original", files / "model", "--unlearned", files / "model", "--vectors", "0:1,1:2",
                      "--output-dir", files / "audit_same"], capsys)
    same = json.loads((files / "audit_same" / "audit.json").read_text())
    assert code == 0 and same["summary"]["mean_cosine_similarity"] == pytest.approx(1.0)


def test_dissect(files, unlearned, capsys):
    out = files / "dissect"
    code, stdout, _ = run(["dissect", "--original", files / "model", "--unlearned", unlearned, "--questions",
                           files / "questions.txt", "--window", "1", "--max-new-tokens", "3", "--output-dir", out],
                          capsys)
    assert code == 0 and "| activation_patching | mlp | 0 |" in stdout
    rows = json.loads((out / "dissection.json").read_text())["rows"]
    assert len(rows) == 2 * 3 + 2  # 2 layers x (mlp, attn, both) + 2 restoration windows
    assert (out / "dissection.png").stat().st_size > 0


def test_evaluate_compares_with_the_original(files, unlearned, capsys):
    out = files / "evaluate"
    code, stdout, _ = run(["evaluate", "--model", unlearned, "--original", files / "model", "--forget",
                           files / "qa.jsonl", "--retain", files / "qa.jsonl", "--metrics", "log_prob,rouge",
                           "--max-new-tokens", "3", "--output-dir", out], capsys)
    assert code == 0 and "| metric | split | original | model |" in stdout
    data = json.loads((out / "evaluation.json").read_text())
    assert set(data["metrics"]) == {"forget", "retain"} and "answer_log_prob" in data["metrics"]["forget"]
    assert data["original"]["metrics"]["forget"]["answer_log_prob"] != data["metrics"]["forget"]["answer_log_prob"]


def test_early_exit_train_generate_bench(files, capsys):
    out = files / "ee"
    code, stdout, _ = run(["early-exit", "train", "--model", files / "model", "--data", files / "texts.txt",
                           "--exit-layers", "1", "--output-dir", out, "--max_steps", "2", *QUIET], capsys)
    assert code == 0 and "exits at layers [1] of 2" in stdout
    assert (out / "modeling_early_exit.py").exists()
    assert json.loads((out / "early_exit_train.json").read_text())["exit_layers"] == [1]

    code, stdout, _ = run(["early-exit", "generate", "--model", out, "--prompt", "the cat", "--strategy", "fixed",
                           "--threshold", "1", "--max-new-tokens", "3", "--output-dir", files / "gen"], capsys)
    assert code == 0
    generated = json.loads((files / "gen" / "generations.json").read_text())
    assert generated["exit_strategy"] == "fixed" and generated["generations"][0]["mean_exit_layer"] == 1.0

    code, stdout, _ = run(["early-exit", "bench", "--model", out, "--prompts", files / "questions.txt", "--strategy",
                           "confidence=0.5", "--strategy", "fixed=1", "--max-new-tokens", "3", "--output-dir",
                           files / "bench"], capsys)
    assert code == 0 and "| fixed=1 |" in stdout
    points = [r["point"] for r in json.loads((files / "bench" / "exits.json").read_text())["rows"]]
    assert points == ["full model", "confidence=0.5", "fixed=1"]


def test_early_exit_train_consistentee_trains_the_policy(files, capsys):
    out = files / "cee"
    code, _, _ = run(["early-exit", "train", "--model", files / "model", "--data", files / "texts.txt",
                      "--exit-layers", "1", "--trainer", "consistentee", "--output-dir", out, "--max_steps", "1",
                      "--policy_warmup_max_steps", "1", "--policy_max_steps", "1", *QUIET], capsys)
    assert code == 0
    assert json.loads((out / "config.json").read_text())["policy_trained"] is True
    # The log is the last stage's: REINFORCE ran after the heads and the warm start.
    history = json.loads((out / "early_exit_train.json").read_text())["log_history"]
    assert any("reward" in entry and "mean_exit_layer" in entry for entry in history), history

    calibrated = files / "cee-calibrated"
    code, stdout, _ = run(["early-exit", "calibrate", "--model", out, "--data", files / "texts.txt", "--target",
                           "0.9", "--output-dir", calibrated], capsys)
    assert code == 0 and "policy thresholds for agreement 0.9" in stdout
    thresholds = json.loads((calibrated / "calibration.json").read_text())["policy_thresholds"]
    config = json.loads((calibrated / "config.json").read_text())
    assert config["exit_strategy"] == "policy" and config["policy_thresholds"] == thresholds
    assert set(thresholds) <= {"1"} and (calibrated / "modeling_early_exit.py").exists()
    code, _, err = run(["early-exit", "calibrate", "--model", out, "--data", files / "texts.txt", "--shortlist-exits",
                        "--output-dir", files / "no-shortlist"], capsys)
    assert code == 2 and "--shortlist-exits needs a token shortlist" in err and not (files / "no-shortlist").exists()
    from transformers import AutoTokenizer

    from hf_unlearn.early_exit import EarlyExitForCausalLM, token_shortlist

    model, tokenizer = EarlyExitForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    model.set_exit_shortlist(token_shortlist(tokenizer, (files / "texts.txt").read_text().splitlines(), size=64))
    model.save_pretrained(files / "cee-shortlist")
    tokenizer.save_pretrained(files / "cee-shortlist")
    code, stdout, _ = run(["early-exit", "calibrate", "--model", files / "cee-shortlist", "--data",
                           files / "texts.txt", "--shortlist-exits", "--output-dir", files / "short"], capsys)
    assert code == 0
    assert json.loads((files / "short" / "config.json").read_text())["shortlist_exits"] is True
    assert json.loads((files / "short" / "calibration.json").read_text())["head_cost"] == 2.6
    # A plain causal LM (wrapped with an untrained policy) has nothing to calibrate.
    code, _, err = run(["early-exit", "calibrate", "--model", files / "model", "--data", files / "texts.txt",
                        "--output-dir", files / "nope"], capsys)
    assert code == 2 and "policy is untrained" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, reason",
    [
        (["unlearn", "--model", "{model}", "--method", "forget_everything", "--forget", "{forget}", "--output-dir",
          "{tmp}"], "unknown unlearning method 'forget_everything'"),
        (["unlearn", "--model", "{model}", "--forget", "{root}/missing.json", "--retain", "{retain}", "--output-dir",
          "{tmp}"], "no such file"),
        (["unlearn", "--model", "{model}", "--forget", "{root}/bad_columns.json", "--retain", "{retain}",
          "--output-dir", "{tmp}"], "none of the supported formats"),
        (["unlearn", "--model", "{model}", "--method", "idk_dpo", "--forget", "{forget}", "--retain", "{retain}",
          "--output-dir", "{tmp}"], "needs the columns 'prompt', 'chosen'"),
        (["unlearn", "--model", "{model}", "--forget", "{forget}", "--output-dir", "{tmp}"], "pass --retain"),
        (["unlearn", "--model", "{model}", "--forget", "{forget}", "--retain", "{retain}", "--output-dir", "{tmp}",
          "--retain_loss", "oops"], "retain_loss='oops'"),
        (["unlearn", "--model", "{model}", "--forget", "{forget}", "--output-dir", "{tmp}", "--warp_speed", "9"],
         "unknown option(s) --warp_speed 9 for NPOConfig"),
        (["unlearn", "--model", "{model}", "--forget", "{forget}", "--output-dir", "{tmp}", "--max_steps", "many"],
         "invalid int value"),
        (["unlearn", "--model", "{root}/no_model_here", "--forget", "{forget}", "--retain", "{retain}",
          "--output-dir", "{tmp}"], "no model at"),
        (["unlearn", "--model", "{root}", "--forget", "{forget}", "--retain", "{retain}", "--output-dir", "{tmp}"],
         "without config.json"),
        (["unlearn", "--model", "{model}", "--method", "needle", "--forget", "{forget}", "--output-dir", "{tmp}"],
         "needle trains concept vectors"),
        (["locate", "--model", "{model}", "--concept", "x", "--questions", "{root}/bad_columns.json"],
         "has no 'question' column"),
        (["locate", "--model", "{model}", "--concept", "x", "--questions", "{root}/questions.txt",
          "--scorer", "magic"],
         "--scorer 'magic'"),
        (["locate", "--model", "{model}", "--concept", "x", "--questions", "{root}/questions.txt", "--top-n", "0"],
         "--top-n must be 'auto' or a number >= 1"),
        (["audit", "--original", "{model}", "--unlearned", "{model}", "--vectors", "{root}/nope.json"],
         "no such file"),
        (["audit", "--original", "{model}", "--unlearned", "{model}", "--vectors", "1:x"], "LAYER:DIM"),
        (["evaluate", "--model", "{model}", "--forget", "{forget}"], "needs a string 'question'"),
        (["evaluate", "--model", "{model}", "--forget", "{root}/qa.jsonl", "--metrics", "bleu"], "--metrics 'bleu'"),
        (["early-exit", "bench", "--model", "{model}", "--prompts", "{root}/questions.txt", "--strategy", "fast=1"],
         "--strategy 'fast=1'"),
        (["dissect", "--original", "{model}"], "required"),
        # Checked before any model loads: the unlearned path does not even exist.
        (["dissect", "--original", "{model}", "--unlearned", "{root}/no_model_here", "--questions",
          "{root}/questions.txt", "--window", "4"], "window=4 must be a positive odd number"),
        (["locate", "--model", "{model}", "--concept", "x", "--questions", "{root}/questions.txt", "--frobnicate"],
         "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(argv, reason, files, tmp_path, capsys):
    values = {"model": files / "model", "forget": files / "forget.json", "retain": files / "retain.jsonl",
              "root": files, "tmp": tmp_path / "out"}
    code, out, err = run([a.format(**values) for a in argv], capsys)
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and reason in lines[0]


def test_unsupported_model_is_one_line_error(files, tmp_path, capsys):
    code, _, err = run(["locate", "--model", files / "opt", "--concept", "x", "--questions", files / "qa.jsonl",
                        "--output-dir", tmp_path], capsys)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "unsupported model" in last and "model_type='opt'" in last


def test_traceback_flag_shows_the_traceback(files, tmp_path, capsys):
    code, _, err = run(["--traceback", "unlearn", "--model", files / "model", "--forget", files / "bad_columns.json",
                        "--retain", files / "retain.jsonl", "--output-dir", tmp_path], capsys)
    assert code == 2 and "Traceback" in err
