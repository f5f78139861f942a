"""``hf-unlearn push``, offline: the fake Hub of test_hub.py (an httpx MockTransport) records each commit.

No test touches the network: conftest sets HF_HUB_OFFLINE=1 and every Hub call goes to the fake client.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import huggingface_hub  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from fake_hub import TOKEN  # noqa: E402
from huggingface_hub import ModelCard  # noqa: E402
from test_hub import _audit, _early_exit  # noqa: E402
from tiny_models import build_tokenizer, tiny_llama  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from hf_unlearn.cli import build_parser, main  # noqa: E402
from hf_unlearn.hub import UnlearningAudit, check_push_folder, save_audited, save_early_exit  # noqa: E402


@pytest.fixture
def no_waits(monkeypatch):
    """huggingface_hub retries a 500 with back-off (1, 2, 4, 8, 8 s): skip the waits, keep the retries."""
    waits = []
    monkeypatch.setattr(huggingface_hub.utils._http.time, "sleep", waits.append)
    return waits


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A folder written by save_audited from a tiny model, and the model (to compare the pushed weights)."""
    tokenizer = build_tokenizer()
    model = tiny_llama(tokenizer)
    folder = save_audited(model, tokenizer, _audit(), tmp_path_factory.mktemp("push") / "tiny-npo")
    return folder, model


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _error_line(err: str) -> str:
    """The one error line, last on stderr (progress bars of model loading may come before it)."""
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    return errors[0]


def _local_files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _copy(folder, target):
    target.mkdir()
    for name, content in _local_files(folder).items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(content)
    return target


def test_push_is_registered_with_help_and_examples(capsys):
    choices = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert "push" in choices
    code, out, _ = run(["push", "--help"], capsys)
    assert code == 0 and "examples:" in out and "hf-unlearn push" in out and "--repo-id" in out


def test_push_saved_audited_folder_sends_one_commit_with_its_files(hub, saved, tmp_path, capsys):
    folder, _ = saved
    before = _local_files(folder)
    code, out, err = run(["push", folder, "--repo-id", "me/tiny-npo", "--private", "--token", TOKEN,
                          "--output-dir", tmp_path / "report"], capsys)
    assert code == 0, err
    assert len(hub.commits) == 1 and hub.created[0]["visibility"] == "private"
    commit = hub.commits[0]
    assert commit["repo_id"] == "me/tiny-npo" and commit["summary"] == (
        "Upload npo unlearned model with its audit (hf_unlearn)")
    # Exactly the folder, and the folder is untouched.
    assert commit["files"] == before == _local_files(folder)
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "audit.json"} <= set(commit["files"])
    assert hub.card(commit).data.library_name == "hf_unlearn"
    assert UnlearningAudit.from_dict(json.loads(commit["files"]["audit.json"])).to_dict() == _audit().to_dict()
    assert "me/tiny-npo" in out and f"{1:040x}" in out
    result = json.loads((tmp_path / "report" / "push.json").read_text())
    assert result["commit"] == f"{1:040x}" and "audit.json" in result["files"]


def test_push_early_exit_folder_with_its_modelling_code(hub, tmp_path, capsys):
    tokenizer = build_tokenizer()
    folder = save_early_exit(_early_exit(tokenizer), tokenizer, tmp_path / "ee")
    code, _, err = run(["push", folder, "--repo-id", "me/tiny-ee", "--commit-message", "my message",
                        "--token", TOKEN], capsys)
    assert code == 0, err
    files = hub.commits[0]["files"]
    assert hub.commits[0]["summary"] == "my message"
    assert {"modeling_early_exit.py", "configuration_early_exit.py", "config.json", "README.md"} <= set(files)
    assert "audit.json" not in files

    # Without the modelling files config.auto_map names, the folder is refused before anything is sent.
    (folder / "modeling_early_exit.py").unlink()
    code, _, err = run(["push", folder, "--repo-id", "me/tiny-ee", "--token", TOKEN], capsys)
    assert code == 2 and len(hub.commits) == 1
    assert len(err.strip().splitlines()) == 1 and "modeling_early_exit.py" in err and "auto_map" in err


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda f: (f / "README.md").unlink(), "README.md"),
        (lambda f: (f / "model.safetensors").unlink(), "model weights"),
        (lambda f: (f / "config.json").unlink(), "config.json"),
        (lambda f: [(f / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")], "tokenizer"),
        (lambda f: (f / "audit.json").write_text("{not json"), "audit.json"),
        (lambda f: (f / "audit.json").write_text('{"format_version": 1}'), "audit.json"),
        (lambda f: (f / "README.md").write_text("---\ntags: [unclosed\n---\ncard\n"), "README.md"),
    ],
)
def test_incomplete_folder_exits_2_with_one_line_naming_what_is_missing(damage, reason, hub, saved, tmp_path,
                                                                      capsys):
    folder = _copy(saved[0], tmp_path / "incomplete")
    damage(folder)
    code, out, err = run(["push", folder, "--repo-id", "me/tiny-npo", "--token", TOKEN], capsys)
    assert code == 2 and not hub.commits and not hub.created
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and reason in lines[0] and "not ready to push" in err
    with pytest.raises(ValueError, match=reason):
        check_push_folder(folder)


def test_everything_missing_is_named_in_one_line(hub, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run(["push", tmp_path / "empty", "--repo-id", "me/x", "--token", TOKEN], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    for reason in ("config.json", "model weights", "tokenizer", "README.md"):
        assert reason in err
    code, _, err = run(["push", tmp_path / "nowhere", "--repo-id", "me/x"], capsys)
    assert code == 2 and "no folder at" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv, reason",
    [
        (["push", "--repo-id", "me/x"], "give FOLDER"),
        (["push", "out", "--repo-id", "not-a-repo-id"], "USER/NAME"),
        (["push", "out", "--model", "m", "--audit", "a.json", "--repo-id", "me/x"], "not both"),
        (["push", "out", "--save", "merged", "--repo-id", "me/x"], "--save"),
        (["push", "--model", "m", "--repo-id", "me/x"], "--audit"),
        (["push", "--model", "m", "--audit", "missing.json", "--repo-id", "me/x"], "no such file"),
        (["push", "out"], "--repo-id"),
    ],
)
def test_bad_arguments_are_one_line(argv, reason, hub, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2 and reason in err and len(err.strip().splitlines()) == 1 and not hub.commits


def test_failed_push_exits_non_zero_with_the_retry_line_and_keeps_the_folder(hub, no_waits, saved, tmp_path,
                                                                             capsys):
    folder = _copy(saved[0], tmp_path / "to-push")
    before = _local_files(folder)
    hub.fail_commits = True
    code, out, err = run(["push", folder, "--repo-id", "me/tiny-npo", "--token", TOKEN], capsys)
    assert code == 1 and not hub.commits and no_waits  # the client retried before giving up
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert "pushing to me/tiny-npo failed" in line and "500" in line
    assert f"the local folder {folder.resolve()} is complete" in line
    assert f"hf-unlearn push {folder.resolve()} --repo-id me/tiny-npo" in line and "upload_folder(" in line
    assert _local_files(folder) == before
    check_push_folder(folder)
    # The retry it prints works once the Hub answers again.
    hub.fail_commits = False
    code, _, err = run(["push", folder.resolve(), "--repo-id", "me/tiny-npo", "--token", TOKEN], capsys)
    assert code == 0, err
    assert hub.commits[0]["files"] == before


def test_model_and_audit_loads_writes_and_pushes(hub, no_waits, saved, tmp_path, capsys):
    folder, model = saved
    tokenizer = build_tokenizer()
    source = tmp_path / "unlearned"
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    audit = _audit()
    audit.to_json(tmp_path / "audit.json")
    local = tmp_path / "written"
    code, out, err = run(["push", "--model", source, "--audit", tmp_path / "audit.json", "--repo-id", "me/tiny-npo",
                          "--local-dir", local, "--token", TOKEN], capsys)
    assert code == 0, err
    assert len(hub.commits) == 1
    files = hub.commits[0]["files"]
    assert files == _local_files(local)
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "audit.json"} <= set(files)
    card = hub.card(hub.commits[0])
    assert card.data.library_name == "hf_unlearn" and "npo" in card.data.tags
    assert 'from_pretrained("me/tiny-npo")' in card.text
    assert UnlearningAudit.from_json(local).to_dict() == audit.to_dict()
    ids = tokenizer(["harry potter studied at"], return_tensors="pt")["input_ids"]
    torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(local)(ids).logits, model(ids).logits,
                               rtol=0, atol=0)
    assert ModelCard.load(local / "README.md").data.base_model == audit.base_model
    capsys.readouterr()  # the progress bar of the load above

    # A non-empty --local-dir needs --overwrite; a plain model cannot be saved as an adapter.
    argv = ["push", "--model", source, "--audit", tmp_path / "audit.json", "--repo-id", "me/tiny-npo", "--token",
            TOKEN]
    code, _, err = run([*argv, "--local-dir", local], capsys)
    assert code == 2 and "--overwrite" in _error_line(err)
    code, _, err = run([*argv, "--save", "adapter"], capsys)
    assert code == 2 and "adapter_config.json" in _error_line(err)
    assert len(hub.commits) == 1

    # Without --local-dir, a failed push keeps the temporary folder and names it.
    hub.fail_commits = True
    code, _, err = run(argv, capsys)
    line = _error_line(err)
    assert code == 1 and "is complete" in line and "`hf-unlearn push " in line and "--token ...`" in line
    kept = Path(line.split("the local folder ")[1].split(" is complete")[0])
    assert check_push_folder(kept) == kept
    shutil.rmtree(kept.parent)


def test_model_as_peft_adapter_pushes_the_adapter_or_the_merged_model(hub, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    tokenizer = build_tokenizer()
    tiny_llama(tokenizer).save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "lora")
    tokenizer.save_pretrained(tmp_path / "lora")
    _audit().to_json(tmp_path / "audit.json")
    argv = ["push", "--model", tmp_path / "lora", "--audit", tmp_path / "audit.json", "--token", TOKEN]
    code, _, err = run([*argv, "--repo-id", "me/tiny-lora", "--local-dir", tmp_path / "adapter"], capsys)
    assert code == 0, err
    files = hub.commits[0]["files"]
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "audit.json"} <= set(files)
    assert "model.safetensors" not in files and "AutoPeftModelForCausalLM" in hub.card(hub.commits[0]).text
    check_push_folder(tmp_path / "adapter")
    code, _, err = run([*argv, "--repo-id", "me/tiny-merged", "--save", "merged", "--local-dir", tmp_path / "merged"],
                       capsys)
    assert code == 0, err
    files = hub.commits[1]["files"]
    assert "model.safetensors" in files and "adapter_config.json" not in files
