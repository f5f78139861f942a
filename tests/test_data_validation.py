"""Bad rows in forget/retain data: a clear error naming the row and the column, or a warned drop; never a crash
inside the model hours into a run."""

from __future__ import annotations

import warnings

import pytest
from datasets import Dataset
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import hf_unlearn as hu
from hf_unlearn.data import prepare_dataset

USER = {"role": "user", "content": "who is a wizard ?"}


def prepare(rows, tokenizer, **kwargs):
    return prepare_dataset(rows, tokenizer, "forget", max_length=32, **kwargs)


@pytest.mark.parametrize(
    "rows",
    [
        ["", "harry potter is a wizard", "   "],
        [{"prompt": "who is a wizard ?", "completion": ""}, {"prompt": "who is a wizard ?", "completion": " harry"}],
        [{"messages": [USER, {"role": "assistant", "content": ""}]},
         {"messages": [USER, {"role": "assistant", "content": "harry potter"}]}],
    ],
    ids=["text", "completion", "assistant-turn"],
)
def test_rows_with_nothing_to_score_are_dropped_with_one_warning(tokenizer, rows):
    with pytest.warns(UserWarning, match=r"dropped \d+ of \d+ examples of forget"):
        dataset = prepare(rows, tokenizer)
    assert len(dataset) == 1
    assert dataset["example_index"] == [0]
    # The kept row scores real text, not only template tokens.
    scored = [t for t in dataset[0]["labels"] if t != -100]
    assert any(word in tokenizer.decode(scored) for word in ("harry", "potter"))


def test_a_run_whose_batches_are_blank_rows_does_not_crash(tokenizer, tmp_path):
    from tiny_models import tiny_llama

    forget = ["", "harry potter is a wizard", "", "", "the wizard school is hogwarts"]
    config = hu.GradAscentConfig(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=1,
                                 report_to="none", use_cpu=True, save_strategy="no")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = hu.GradAscentTrainer(tiny_llama(tokenizer), config, train_dataset=forget, processing_class=tokenizer)
    trainer.train()
    assert len(trainer.train_dataset) == 2


def test_every_row_blank_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="every example of forget is empty"):
        prepare(["", " "], tokenizer)


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"prompt": None, "completion": " harry"}], r"row 0, column 'prompt' is None"),
        ([{"prompt": "who ?", "completion": " harry"}, {"prompt": "who ?", "completion": None}],
         r"row 1, column 'completion' is None"),
        ([{"text": ["harry", "potter"]}], r"row 0, column 'text' is a list"),
        ([{"messages": []}], r"row 0, column 'messages' is an empty conversation"),
        ([{"prompt": [USER], "completion": "harry potter"}], r"row 0: 'prompt' and 'completion' must both"),
        ([{"text": "harry \ud800 potter"}], r"row 0, column 'text' holds a character UTF-8 cannot encode"),
        ([{"text": "harry"}, {"text": 3}], r"mixes value types|row 1, column 'text' is a int"),
        ([{"messages": [USER]}], r"must end with an assistant turn"),
    ],
    ids=["none-prompt", "none-completion", "list-text", "empty-messages", "chat-prompt-str-completion",
         "lone-surrogate", "mixed-types", "no-assistant"],
)
def test_bad_values_name_the_row_and_the_column(tokenizer, rows, match):
    with pytest.raises(ValueError, match=match):
        prepare(rows, tokenizer)


def test_pretokenised_data_gets_the_same_checks(tokenizer):
    ids = tokenizer("harry potter is a wizard")["input_ids"]
    with pytest.raises(ValueError, match="no 'labels' column"):
        prepare(Dataset.from_list([{"input_ids": ids}]), tokenizer)
    with pytest.raises(ValueError, match="no example of forget has a token to score: every label is -100"):
        prepare(Dataset.from_list([{"input_ids": ids, "labels": [-100] * len(ids)}]), tokenizer)
    with pytest.raises(ValueError, match="row 0: input_ids has"):
        prepare(Dataset.from_list([{"input_ids": ids, "labels": ids[:-1]}]), tokenizer)
    mixed = Dataset.from_list([{"input_ids": ids, "labels": [-100] * len(ids)}, {"input_ids": ids, "labels": ids}])
    with pytest.warns(UserWarning, match="dropped 1 of 2"):
        kept = prepare(mixed, tokenizer)
    assert kept["labels"] == [ids] and kept["attention_mask"] == [[1] * len(ids)]


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
ROW = st.fixed_dictionaries(
    {}, optional={"text": JSONISH, "prompt": JSONISH, "completion": JSONISH, "messages": JSONISH}
)


@settings(
    derandomize=True, max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(ROW, max_size=4) | st.lists(st.text(max_size=10), max_size=3) | JSONISH)
@example(rows=[{"text": 2**63}])
def test_any_input_gives_a_dataset_or_a_value_error(tokenizer, rows):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dataset = prepare(rows, tokenizer)
        except ValueError:
            return
    assert len(dataset) > 0
    assert all(any(t != -100 for t in labels[1:]) for labels in dataset["labels"])
