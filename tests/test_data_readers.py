"""Readers (every format, column mapping, exact error locations) and forget-request checks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from obliviate.data import (
    ItemList,
    LabelledText,
    QAItem,
    TextPassage,
    check_forget_set,
    check_overlap,
    data_hash,
    find_overlap,
    load_items,
    parse_mapping,
)
from obliviate.errors import ConfigError, DataError

ROWS = [
    {
        "question": "Where was Mara Lind born?",
        "answer": "In Oslo, Norway.",
        "paraphrased_answer": "Mara Lind is from Oslo.",
        "perturbed_answers": ["In Bergen, Norway.", "In Malmo, Sweden."],
        "paraphrased_questions": ["What is Mara Lind's birthplace?"],
        "subject": "Mara Lind",
    },
    {
        "question": "What did Mara Lind write in 1998?",
        "answer": "A book about the blue whale.",
        "paraphrased_answer": "Her 1998 book was about blue whales.",
        "perturbed_answers": ["A book about the red fox.", "A book about the lazy dog."],
        "paraphrased_questions": ["Which book did Mara Lind publish in 1998?"],
        "subject": "Mara Lind",
    },
]
EXPECTED = [QAItem(**row) for row in ROWS]


# ---------------------------------------------------------------------------------------------
# Writers for every supported format; each returns the source to pass to load_items.
# ---------------------------------------------------------------------------------------------


def write_jsonl(tmp: Path, rows: list[dict]) -> Path:
    path = tmp / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json_list(tmp: Path, rows: list[dict]) -> Path:
    path = tmp / "items.json"
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path


def write_json_wrapped(tmp: Path, rows: list[dict]) -> Path:
    path = tmp / "items.json"
    path.write_text(json.dumps({"version": 2, "data": rows}), encoding="utf-8")
    return path


def write_json_lines_in_json(tmp: Path, rows: list[dict]) -> Path:
    path = tmp / "items.json"  # TOFU's .json files hold one object per line
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def write_csv(tmp: Path, rows: list[dict]) -> Path:
    path = tmp / "items.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:  # list cells are written as JSON lists
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    return path


def write_parquet(tmp: Path, rows: list[dict]) -> Path:
    path = tmp / "items.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_saved_dataset(tmp: Path, rows: list[dict]) -> Path:
    path = tmp / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def write_directory(tmp: Path, rows: list[dict]) -> Path:
    path = tmp / "parts"
    path.mkdir()
    write_jsonl(tmp, rows[:1]).rename(path / "a.jsonl")
    write_csv(tmp, rows[1:]).rename(path / "b.csv")
    return path


WRITERS = [
    write_jsonl,
    write_json_list,
    write_json_wrapped,
    write_json_lines_in_json,
    write_csv,
    write_parquet,
    write_saved_dataset,
    write_directory,
]


@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w.__name__)
def test_every_format_reads_the_same_items(tmp_path, writer):
    items = load_items(writer(tmp_path, ROWS))
    assert items == EXPECTED


def test_locations_follow_the_source_lines(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    items = load_items(path)
    assert isinstance(items, ItemList)
    assert items.locations == [f"{path}:1", f"{path}:3"]


def test_directory_locations_name_each_file(tmp_path):
    items = load_items(write_directory(tmp_path, ROWS))
    assert items.locations == [f"{tmp_path / 'parts' / 'a.jsonl'}:1", f"{tmp_path / 'parts' / 'b.csv'}:2"]


def test_directory_split_picks_the_file_with_that_stem(tmp_path):
    source = write_directory(tmp_path, ROWS)
    assert load_items(source, split="b") == EXPECTED[1:]
    with pytest.raises(DataError, match="no data file named 'test'"):
        load_items(source, split="test")


def test_saved_dataset_dict_needs_a_split_when_it_has_several(tmp_path):
    path = tmp_path / "dd"
    dd = datasets.DatasetDict(
        {"forget": datasets.Dataset.from_list(ROWS[:1]), "retain": datasets.Dataset.from_list(ROWS[1:])}
    )
    dd.save_to_disk(str(path))
    assert load_items(path, split="retain") == EXPECTED[1:]
    with pytest.raises(DataError) as err:
        load_items(path)
    assert str(err.value) == f"{path}: several splits (forget, retain); choose one"
    with pytest.raises(DataError) as err:
        load_items(path, split="test")
    assert str(err.value) == f"{path}: no split 'test' (has: forget, retain)"


# ---------------------------------------------------------------------------------------------
# Fields, aliases, mapping, kinds
# ---------------------------------------------------------------------------------------------


def test_tofu_column_names_and_single_strings_are_accepted(tmp_path):
    row = {"question": "Q?", "answer": "A.", "perturbed_answer": "wrong", "paraphrased_question": "Q again?"}
    [item] = load_items(write_jsonl(tmp_path, [row]))
    assert item.perturbed_answers == ["wrong"]
    assert item.paraphrased_questions == ["Q again?"]
    assert item.meta == {}


def test_unused_columns_go_into_meta(tmp_path):
    row = {"question": "Q?", "answer": "A.", "id": 7, "source": "wiki", "meta": {"split": "forget"}}
    [item] = load_items(write_jsonl(tmp_path, [row]))
    assert item.meta == {"id": 7, "source": "wiki", "split": "forget"}


def test_numbers_are_read_as_strings(tmp_path):
    [item] = load_items(write_jsonl(tmp_path, [{"question": "Which year?", "answer": 1998}]))
    assert item.answer == "1998"


def test_mapping_reads_fields_from_other_columns(tmp_path):
    rows = [{"prompt": "Q1?", "response": "A1.", "wrong": ["B1."], "id": 1}]
    mapping = parse_mapping(["question=prompt", "answer=response,perturbed_answers=wrong"])
    [item] = load_items(write_jsonl(tmp_path, rows), mapping=mapping)
    assert item == QAItem("Q1?", "A1.", perturbed_answers=["B1."], meta={"id": 1})


def test_mapping_applies_to_csv_and_parquet(tmp_path):
    rows = [{"prompt": "Q1?", "response": "A1."}, {"prompt": "Q2?", "response": "A2."}]
    mapping = {"question": "prompt", "answer": "response"}
    for path in (write_csv(tmp_path, rows), write_parquet(tmp_path, rows)):
        assert [(i.question, i.answer) for i in load_items(path, mapping=mapping)] == [("Q1?", "A1."), ("Q2?", "A2.")]


def test_text_kind(tmp_path):
    rows = [{"text": "The quick brown fox."}, {"prefix": "A red cat ", "continuation": "sleeps on a mat."}]
    items = load_items(write_jsonl(tmp_path, rows), kind="text")
    assert items[0] == TextPassage("The quick brown fox.")
    assert items[1].text == "A red cat sleeps on a mat."
    assert (items[1].prefix, items[1].continuation) == ("A red cat ", "sleeps on a mat.")


def test_labelled_kind_casts_labels_to_strings(tmp_path):
    rows = [{"text": "good film", "label": 1}, {"text": "bad film", "label": "negative", "subject": "film"}]
    items = load_items(write_jsonl(tmp_path, rows), kind="labelled")
    assert items == [LabelledText("good film", "1"), LabelledText("bad film", "negative", subject="film")]
    items = load_items(write_csv(tmp_path, [{"text": "good film", "label": 1}]), kind="labelled")
    assert items[0].label == "1"


@pytest.mark.parametrize(
    "entries, expected",
    [
        (["question=prompt"], {"question": "prompt"}),
        (["question = prompt", "answer=response"], {"question": "prompt", "answer": "response"}),
        ("question=prompt,answer=response", {"question": "prompt", "answer": "response"}),
        ([], {}),
    ],
)
def test_parse_mapping(entries, expected):
    assert parse_mapping(entries) == expected


@pytest.mark.parametrize("entry", ["question", "question=", "=prompt", "question:prompt"])
def test_parse_mapping_rejects_malformed_entries(entry):
    with pytest.raises(ConfigError, match="expected field=column"):
        parse_mapping([entry])


def test_parse_mapping_rejects_a_field_mapped_twice():
    with pytest.raises(ConfigError, match="field 'question' is mapped twice"):
        parse_mapping(["question=prompt", "question=query"])


def test_unknown_mapping_field_and_kind_are_config_errors(tmp_path):
    path = write_jsonl(tmp_path, ROWS)
    with pytest.raises(ConfigError, match="unknown field 'label' for kind 'qa'"):
        load_items(path, mapping={"label": "x"})
    with pytest.raises(ConfigError, match="unknown data kind 'images'"):
        load_items(path, kind="images")


# ---------------------------------------------------------------------------------------------
# Bad input: exact messages with path and line
# ---------------------------------------------------------------------------------------------


def error_of(source, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        load_items(source, **kwargs)
    return str(err.value)


def test_missing_field_jsonl_counts_blank_lines(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"question": "Q1", "answer": "A1"}\n\n{"question": "Q2"}\n', encoding="utf-8")
    assert error_of(path) == f"{path}:3: field 'answer' missing"


def test_missing_field_csv_counts_the_header(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("question,answer\nQ1,A1\nQ2,\n", encoding="utf-8")
    assert error_of(path) == f"{path}:3: field 'answer' missing"


def test_missing_field_json_list_uses_the_index(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps([{"question": "Q1", "answer": "A1"}, {"answer": "A2"}]), encoding="utf-8")
    assert error_of(path) == f"{path}:2: field 'question' missing"


def test_missing_field_parquet_and_saved_dataset_use_the_row(tmp_path):
    rows = [{"question": "Q1", "answer": "A1"}, {"question": "Q2", "answer": "A2"}, {"question": "Q3", "answer": None}]
    path = write_parquet(tmp_path, rows)
    assert error_of(path) == f"{path}:3: field 'answer' missing"
    path = write_saved_dataset(tmp_path, rows)
    assert error_of(path) == f"{path}:3: field 'answer' missing"


def test_missing_mapped_column_names_both(tmp_path):
    path = write_jsonl(tmp_path, [{"question": "Q1", "answer": "A1"}])
    assert error_of(path, mapping={"question": "prompt"}) == f"{path}:1: field 'question' (column 'prompt') missing"


def test_missing_required_fields_of_other_kinds(tmp_path):
    path = write_jsonl(tmp_path, [{"prefix": "only a prefix"}])
    assert error_of(path, kind="text") == f"{path}:1: field 'text' missing"
    path = write_jsonl(tmp_path, [{"text": "no label"}])
    assert error_of(path, kind="labelled") == f"{path}:1: field 'label' missing"


def test_non_utf8_reports_the_line(tmp_path):
    for name in ("f.jsonl", "f.json", "f.csv"):
        path = tmp_path / name
        path.write_bytes(b'{"question": "Q1", "answer": "A1"}\n{"question": "Q2", "answer": "A2"}\n{"q": "\xff"}\n')
        assert error_of(path) == f"{path}:3: not valid UTF-8"


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfquestion,answer\nQ1,A1\n")
    assert load_items(path)[0].question == "Q1"


def test_malformed_jsonl_line(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"question": "Q1", "answer": "A1"}\n{"question": "Q2" "answer": "A2"}\n', encoding="utf-8")
    message = error_of(path)
    assert message.startswith(f"{path}:2: invalid JSON (")
    assert "column 19" in message  # 1-based: where `"answer"` starts without a comma before it


def test_malformed_json_document(tmp_path):
    path = tmp_path / "f.json"
    path.write_text('[\n  {"question": "Q1", "answer": "A1"},\n  {"question": "Q2",}\n]\n', encoding="utf-8")
    assert error_of(path).startswith(f"{path}:3: invalid JSON (")


def test_malformed_json_lines_in_json_file(tmp_path):
    path = tmp_path / "f.json"
    path.write_text('{"question": "Q1", "answer": "A1"}\n{"question": "Q2", "answer": \n', encoding="utf-8")
    assert error_of(path).startswith(f"{path}:2: invalid JSON (")


def test_row_that_is_not_an_object(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"question": "Q1", "answer": "A1"}\n["Q2", "A2"]\n', encoding="utf-8")
    assert error_of(path) == f"{path}:2: expected a JSON object, got a list"


@pytest.mark.parametrize(
    "row, field, problem",
    [
        ({"question": "Q", "answer": ["A", "B"]}, "answer", "must be a string"),
        ({"question": {"text": "Q"}, "answer": "A"}, "question", "must be a string"),
        ({"question": "Q", "answer": "A", "paraphrased_answer": True}, "paraphrased_answer", "must be a string"),
        (
            {"question": "Q", "answer": "A", "perturbed_answers": {"a": "B"}},
            "perturbed_answers",
            "must be a list of strings",
        ),
        (
            {"question": "Q", "answer": "A", "perturbed_answers": ["B", 3]},
            "perturbed_answers",
            "must be a list of strings",
        ),
        (
            {"question": "Q", "answer": "A", "paraphrased_questions": 5},
            "paraphrased_questions",
            "must be a list of strings",
        ),
        ({"question": "Q", "answer": "A", "meta": "x"}, "meta", "must be an object"),
    ],
)
def test_wrong_types(tmp_path, row, field, problem):
    path = write_jsonl(tmp_path, [{"question": "Q0", "answer": "A0"}, row])
    assert error_of(path) == f"{path}:2: field '{field}' {problem}"


def test_wrong_type_in_an_aliased_column_names_the_column(tmp_path):
    path = write_jsonl(tmp_path, [{"question": "Q", "answer": "A", "perturbed_answer": 3}])
    assert (
        error_of(path) == f"{path}:1: field 'perturbed_answers' (column 'perturbed_answer') must be a list of strings"
    )


def test_wrong_label_type(tmp_path):
    path = write_jsonl(tmp_path, [{"text": "t", "label": ["a"]}])
    assert error_of(path, kind="labelled") == f"{path}:1: field 'label' must be a string or a number"


def test_csv_row_with_too_many_cells(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("question,answer\nQ1,A1\nQ2,A2,extra\n", encoding="utf-8")
    assert error_of(path) == f"{path}:3: row has more cells than the header"


def test_missing_file(tmp_path, monkeypatch):
    path = tmp_path / "nope.jsonl"
    assert error_of(path) == f"{path}: no such file"
    # `data/forget` could be a hub name, but `data/` is a local directory, so it is a missing local file.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert error_of("data/forget") == "data/forget: no such file"


def test_unknown_extension(tmp_path):
    path = tmp_path / "items.txt"
    path.write_text("Q1\tA1\n", encoding="utf-8")
    assert error_of(path) == (
        f"{path}: unsupported file type '.txt' (use .jsonl, .json, .csv, .parquet or a directory)"
    )


@pytest.mark.parametrize(
    "name, content",
    [
        ("e.jsonl", ""),
        ("e.jsonl", "\n\n"),
        ("e.json", ""),
        ("e.json", "[]"),
        ("e.json", '{"data": []}'),
        ("e.csv", ""),
        ("e.csv", "question,answer\n"),
    ],
)
def test_empty_sources_have_no_items(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert error_of(path) == f"{path}: no items"


def test_empty_directory_has_no_items(tmp_path):
    assert error_of(tmp_path) == f"{tmp_path}: no items"


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "f.parquet"
    path.write_bytes(b"not parquet")
    assert error_of(path).startswith(f"{path}: not a readable Parquet file (")


def test_json_with_several_lists_is_ambiguous(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"forget": ROWS, "retain": ROWS}), encoding="utf-8")
    assert error_of(path) == f"{path}: several lists of objects (forget, retain); expected one"


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def test_check_forget_set():
    with pytest.raises(DataError) as err:
        check_forget_set([], "forget.jsonl")
    assert str(err.value) == "forget.jsonl: forget set is empty"
    check_forget_set(EXPECTED, "forget.jsonl")  # does not raise


def test_overlap_rule_same_content_ignores_case_punctuation_and_spacing():
    forget = [QAItem("Who wrote X?", "Mara Lind."), QAItem("Where is Y?", "In Oslo.")]
    retain = [QAItem("Something else?", "No."), QAItem("where  is y", "in oslo"), QAItem("Where is Y?", "In Rome.")]
    assert find_overlap(forget, retain) == [(1, 1)]


def test_overlap_rule_same_subject_needs_a_subject_on_both_sides():
    forget = [QAItem("Q1?", "A1.", subject="Mara Lind"), QAItem("Q2?", "A2.")]
    retain = [QAItem("R1?", "B1.", subject="mara lind"), QAItem("R2?", "B2."), QAItem("R3?", "B3.", subject="Bob")]
    assert find_overlap(forget, retain) == [(0, 0)]


def test_overlap_for_text_items():
    forget = [TextPassage("The quick brown fox."), TextPassage("A red cat.")]
    retain = [TextPassage("a red cat"), TextPassage("A blue cat.")]
    assert find_overlap(forget, retain) == [(1, 0)]


def test_check_overlap_cites_source_lines(tmp_path):
    forget_path = write_jsonl(tmp_path, [{"question": "Q1?", "answer": "A1."}, {"question": "Q2?", "answer": "A2."}])
    retain_path = tmp_path / "retain.csv"
    retain_path.write_text("question,answer,subject\nR1?,B1.,\nq2,a2,\n", encoding="utf-8")
    forget, retain = load_items(forget_path), load_items(retain_path)
    warnings = check_overlap(forget, retain, forget_path, retain_path, strict=False)
    expected = f"{retain_path}:3: item overlaps {forget_path}:2 (same question and answer)"
    assert warnings == [expected]
    with pytest.raises(DataError) as err:
        check_overlap(forget, retain, forget_path, retain_path, strict=True)
    assert str(err.value) == expected
    assert (err.value.path, err.value.line) == (str(retain_path), 3)


def test_check_overlap_on_plain_lists_uses_item_numbers():
    forget = [QAItem("Q1?", "A1.", subject="Ann")]
    retain = [QAItem("R1?", "B1."), QAItem("R2?", "B2.", subject="Ann")]
    assert check_overlap(forget, retain, "forget.jsonl", "retain.jsonl") == [
        "retain.jsonl:2: item overlaps forget.jsonl:1 (same subject 'Ann')"
    ]
    assert check_overlap(forget, [QAItem("R1?", "B1.")], "f", "r", strict=True) == []


def test_data_hash_tracks_content_and_kind():
    items = [QAItem(**row) for row in ROWS]
    assert data_hash(items) == data_hash([QAItem(**row) for row in ROWS])
    changed = [QAItem(**{**ROWS[0], "answer": "In Bergen."}), items[1]]
    assert data_hash(changed) != data_hash(items)
    assert data_hash(items[::-1]) != data_hash(items)


# ---------------------------------------------------------------------------------------------
# Hub names (the hub client is replaced; nothing is downloaded)
# ---------------------------------------------------------------------------------------------


def test_hub_name_with_config_and_split(monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    items = load_items("owner/qa-set:forget", split="test")
    assert items == EXPECTED
    assert items.locations == ["owner/qa-set:forget:1", "owner/qa-set:forget:2"]
    load_items("owner/qa-set")
    assert calls == [("owner/qa-set", "forget", "test"), ("owner/qa-set", None, "train")]


def test_hub_failure_is_one_line(monkeypatch):
    def fake_load_dataset(name, config=None, split=None):
        raise ConnectionError("could not reach\nthe hub")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert error_of("owner/qa-set") == (
        "owner/qa-set: not a local file or directory, and not loadable from the Hugging Face hub "
        "(ConnectionError: could not reach the hub)"
    )
