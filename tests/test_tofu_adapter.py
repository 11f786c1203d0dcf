"""The TOFU adapter on a small local copy in TOFU's schema, and on TOFU's real utility-set files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from obliviate.data import QAItem, check_overlap, load_items
from obliviate.data.adapters import TofuData, load_tofu, load_tofu_set
from obliviate.errors import ConfigError, DataError

FIXTURE = Path(__file__).parent / "fixtures" / "tofu"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "tofu-legacy"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="shared TOFU reference files not present")


def raw_rows(path: Path) -> list[dict]:
    """The file's JSON lines, parsed independently of the readers under test."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_load_tofu_fills_every_field_from_the_perturbed_files():
    data = load_tofu(FIXTURE, "forget01")
    assert isinstance(data, TofuData)
    assert data.forget_split == "forget01"
    rows = raw_rows(FIXTURE / "forget01_perturbed.json")
    assert len(data.forget) == len(rows)
    for item, row in zip(data.forget, rows, strict=True):
        assert isinstance(item, QAItem)
        assert (item.question, item.answer) == (row["question"], row["answer"])
        assert item.paraphrased_answer == row["paraphrased_answer"]
        assert item.perturbed_answers == row["perturbed_answer"]
        assert item.paraphrased_questions == [row["paraphrased_question"]]
    assert [item.meta for item in data.forget] == [
        {"tofu_set": "forget01_perturbed", "index": i} for i in range(len(rows))
    ]


def test_load_tofu_retain_sets_and_utility():
    data = load_tofu(FIXTURE, "forget01_perturbed")  # the _perturbed suffix is accepted
    assert [i.question for i in data.retain] == [r["question"] for r in raw_rows(FIXTURE / "retain_perturbed.json")]
    assert all(i.paraphrased_answer and len(i.perturbed_answers) == 3 for i in data.retain)
    assert data.retain_train is not None
    assert [i.question for i in data.retain_train] == [r["question"] for r in raw_rows(FIXTURE / "retain99.json")]
    assert set(data.utility) == {"real_authors", "world_facts"}
    for key in data.utility:
        rows = raw_rows(FIXTURE / f"{key}_perturbed.json")
        assert [(i.answer, i.perturbed_answers) for i in data.utility[key]] == [
            (r["answer"], r["perturbed_answer"]) for r in rows
        ]
        assert all(i.paraphrased_answer is None for i in data.utility[key])


def test_fixture_forget_and_retain_do_not_overlap():
    data = load_tofu(FIXTURE, "forget01")
    assert check_overlap(data.forget, data.retain_train, "forget", "retain", strict=True) == []


def test_load_tofu_falls_back_to_the_plain_files(tmp_path):
    shutil.copy(FIXTURE / "forget01.json", tmp_path)
    shutil.copy(FIXTURE / "retain99.json", tmp_path)
    data = load_tofu(tmp_path, "forget01")
    assert [i.question for i in data.forget] == [r["question"] for r in raw_rows(FIXTURE / "forget01.json")]
    assert all(i.paraphrased_answer is None and i.perturbed_answers == [] for i in data.forget)
    assert data.retain == data.retain_train  # no retain_perturbed: evaluate on the training retain set
    assert data.utility == {}


def test_load_tofu_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown TOFU forget split 'forget20'"):
        load_tofu(FIXTURE, "forget20")
    with pytest.raises(DataError) as err:
        load_tofu(FIXTURE, "forget10")
    assert str(err.value) == f"{FIXTURE}: no forget10_perturbed.json or forget10.json"
    shutil.copy(FIXTURE / "forget01.json", tmp_path)
    with pytest.raises(DataError) as err:
        load_tofu(tmp_path, "forget01")
    assert str(err.value) == f"{tmp_path}: no retain_perturbed.json or retain99.json"
    with pytest.raises(DataError, match="expected a directory"):
        load_tofu(FIXTURE / "forget01.json")


def test_bad_row_in_a_tofu_file_is_located(tmp_path):
    shutil.copy(FIXTURE / "retain99.json", tmp_path)
    lines = (FIXTURE / "forget01_perturbed.json").read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[1])
    row["perturbed_answer"] = {"a": "b"}
    lines[1] = json.dumps(row)
    (tmp_path / "forget01_perturbed.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_tofu(tmp_path, "forget01")
    expected = "field 'perturbed_answers' (column 'perturbed_answer') must be a list of strings"
    assert str(err.value) == f"{tmp_path / 'forget01_perturbed.json'}:2: {expected}"


@needs_reference
@pytest.mark.parametrize("key, size", [("real_authors", 100), ("world_facts", 117)])
def test_reference_utility_sets(tmp_path, key, size):
    for name in ("forget01_perturbed.json", "retain_perturbed.json"):
        shutil.copy(FIXTURE / name, tmp_path)
    shutil.copy(REFERENCE / f"{key}_perturbed.json", tmp_path)
    items = load_tofu(tmp_path, "forget01").utility[key]
    rows = raw_rows(REFERENCE / f"{key}_perturbed.json")
    assert len(items) == len(rows) == size
    for item, row in zip(items, rows, strict=True):
        assert (item.question, item.answer, item.perturbed_answers) == (
            row["question"],
            row["answer"],
            row["perturbed_answer"],
        )
        assert len(item.perturbed_answers) == 3 and item.paraphrased_answer is None


@needs_reference
def test_reference_files_read_directly_and_through_the_adapter_agree():
    path = REFERENCE / "world_facts_perturbed.json"
    plain = load_items(path)  # the TOFU column names are read as aliases
    adapted = load_tofu_set(path, "world_facts_perturbed")
    assert [(i.question, i.answer, i.perturbed_answers) for i in plain] == [
        (i.question, i.answer, i.perturbed_answers) for i in adapted
    ]
    assert plain.locations[4] == f"{path}:5"


def test_hub_path_loads_the_same_configs_as_a_local_copy(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(raw_rows(FIXTURE / f"{config}.json"))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = load_tofu("locuslab/TOFU", "forget01")
    local = load_tofu(FIXTURE, "forget01")
    assert sorted(calls) == sorted(
        ("locuslab/TOFU", config, "train")
        for config in (
            "forget01_perturbed",
            "retain_perturbed",
            "retain99",
            "real_authors_perturbed",
            "world_facts_perturbed",
            "holdout01",  # absent from this fixture: the split loads without a holdout set
        )
    )
    assert (hub.forget, hub.retain, hub.retain_train, hub.utility) == (
        local.forget,
        local.retain,
        local.retain_train,
        local.utility,
    )
    assert hub.source == "locuslab/TOFU"
