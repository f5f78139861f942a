"""``hf-unlearn demo --quick`` end to end through the CLI: the report folder, its sections, and that every number the
report shows is the one in ``audit.json``."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from huggingface_hub import ModelCard  # noqa: E402

from hf_unlearn.cli import main  # noqa: E402
from hf_unlearn.hub import UnlearningAudit, check_push_folder  # noqa: E402

SECTIONS = (
    "## Summary", "## Setup", "## Answers before and after", "### Unrelated questions", "## Evaluation metrics",
    "## Concept vectors", "## Dissection: activation patching and parameter restoration", "## Relearning attack",
    "## Files",
)


def fmt(value) -> str:
    """The report's number format."""
    return "n/a" if value is None else f"{float(value):.3f}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    code = main(["demo", "--quick", "--output-dir", str(out), "--no-progress"])
    assert code == 0
    return out


def test_demo_writes_the_report_folder(demo):
    for name in ("report.md", "audit.json", "README.md", "figures/before_after.png", "figures/krs.png",
                 "config.json", "model.safetensors", "tokenizer.json"):
        assert (demo / name).is_file(), name
    for name in ("figures/before_after.png", "figures/krs.png"):
        assert (demo / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The folder is the one `hf-unlearn push` uploads: weights, tokenizer, card and a readable audit.json.
    assert check_push_folder(demo) == demo.resolve()
    card = ModelCard.load(demo / "README.md")
    assert card.data.library_name == "hf_unlearn" and "npo" in card.data.tags
    assert card.data.eval_results


def test_report_has_every_section_in_order(demo):
    report = (demo / "report.md").read_text()
    positions = [report.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert "![before and after](figures/before_after.png)" in report and "![KRS by layer](figures/krs.png)" in report


def test_report_numbers_are_the_audit_json_numbers(demo):
    report = (demo / "report.md").read_text()
    data = json.loads((demo / "audit.json").read_text())
    audit = UnlearningAudit.from_json(demo / "audit.json")
    meta = data["meta"]
    assert meta["demo"]["quick"] is True and data["method"] == "npo" and data["concept"] == "Harry Potter"

    needle = meta["needle"]["evaluation"]
    for row in data["evaluation_before"]["metrics"]:
        metric, split = row["metric"], row["split"]
        after = audit.evaluation_after.get(metric, split)
        expected = (f"| {metric} | {split or '-'} | {fmt(row['value'])} | {fmt(after)} | "
                    f"{fmt(needle[split or 'all'].get(metric))} |")
        assert expected in report

    for name, summary in meta["concept_vector_audit"].items():
        assert (f"| {name} | {fmt(summary['mean_cosine_similarity'])} | {fmt(summary['mean_jaccard_similarity'])} | "
                f"{fmt(summary['mean_norm_distance'])} |") in report
    # The method's summary is the audit's own concept-vector table, and NPO leaves the located vectors in place.
    assert meta["concept_vector_audit"]["NPO"] == audit.concept_vectors.summary()
    assert audit.concept_vectors.summary()["mean_cosine_similarity"] > meta["concept_vector_audit"]["Needle"][
        "mean_cosine_similarity"]

    best = max((r for r in data["dissection"]["rows"] if r["experiment"] == "activation_patching"),
               key=lambda r: r["krs"])
    window = f"layers {min(best['window'])}-{max(best['window'])}"
    assert f"| {best['component']} | {window} | {fmt(best['krs'])} |" in report

    (attack,) = audit.attacks
    relearning = meta["relearning"]["NPO"]
    assert attack.name == "relearning" and attack.after == relearning["after"]["rouge_l"]
    assert (f"| NPO | {fmt(attack.before)} | {fmt(attack.after)} | {fmt(relearning['before']['bleu'])} | "
            f"{fmt(relearning['after']['bleu'])} |") in report

    for finding in audit.findings():
        assert finding in report  # the same findings as the card, from the same audit
    forget = meta["log_probs"]
    assert forget["original"]["forget"] == audit.evaluation_before.get("answer_log_prob", "forget")
    assert fmt(forget["NPO"]["forget"]) in report


def test_demo_refuses_a_folder_that_is_not_a_report(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code = main(["demo", "--quick", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_demo_unknown_concept_is_one_line(capsys):
    code = main(["demo", "--quick", "--concept", "Narnia"])
    err = capsys.readouterr().err
    assert code == 2 and "Harry Potter" in err and len(err.strip().splitlines()) == 1
