"""Unlearning on raw text: text passages as forget and retain items, chunked to max_length.

A file of passages (a `text` column, no `question`) is read as text; every method that takes text
trains on all of a passage's tokens, or on its continuation when it has a prefix; QA-only methods
refuse text in one line. Tested on MUSE's corpus fixture and on the world's biographies.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from obliviate.data import load_items
from obliviate.data.schema import QAItem, TextPassage
from obliviate.methods import METHODS, check_item_kinds, get_method, takes_text
from obliviate.train.data import IGNORE, chunk_passages, encode_items, encode_passage
from tests.conftest import make_tiny_llama
from tests.helpers import FORGET, assert_one_line_error, run_cli

MUSE = Path(__file__).parent / "fixtures" / "muse"
PASSAGES = [
    "The quick brown fox jumps over the lazy dog. A red cat sleeps on a warm mat.",
    "Alice and Bob met in London, then travelled to Rome, Berlin and Madrid by train.",
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_file_with_a_text_column_and_no_question_reads_as_passages(tmp_path):
    path = _write_jsonl(tmp_path / "passages.jsonl", [{"text": t, "source": "x"} for t in PASSAGES])
    items = load_items(path, "auto")
    assert all(isinstance(it, TextPassage) for it in items) and items[0].meta == {"source": "x"}
    split = _write_jsonl(tmp_path / "split.jsonl", [{"prefix": "The quick", "continuation": " brown fox"}])
    assert load_items(split, "auto")[0].text == "The quick brown fox"
    qa = _write_jsonl(tmp_path / "qa.jsonl", [it.to_dict() for it in FORGET])
    assert all(isinstance(it, QAItem) for it in load_items(qa, "auto"))


def test_passage_labels_cover_every_token_or_only_the_continuation(tiny_tokenizer):
    whole, cut = encode_passage(tiny_tokenizer, TextPassage(PASSAGES[0]))
    assert not cut and whole.input_ids[0] == tiny_tokenizer.bos_token_id
    assert whole.labels[0] == IGNORE and whole.labels[1:] == whole.input_ids[1:]
    prefixed, _ = encode_passage(tiny_tokenizer, TextPassage("The quick brown fox", "The quick", " brown fox"))
    n_prefix = 1 + len(tiny_tokenizer("The quick", add_special_tokens=False)["input_ids"])
    assert prefixed.labels[:n_prefix] == [IGNORE] * n_prefix
    assert prefixed.labels[n_prefix:] == prefixed.input_ids[n_prefix:] and len(prefixed.labels) > n_prefix
    mixed, _ = encode_items(tiny_tokenizer, [FORGET[0], TextPassage(PASSAGES[1])])
    assert len(mixed) == 2 and mixed[1].labels[1:] == mixed[1].input_ids[1:]


def test_long_passages_are_chunked_to_fit_max_length(tiny_tokenizer):
    long = TextPassage(" ".join(PASSAGES * 4), subject="s")
    items, counts = chunk_passages(tiny_tokenizer, [long, FORGET[0], TextPassage(PASSAGES[0])], max_length=24)
    assert counts["passages"] == 1 and counts["chunks"] == len(items) - 2 > 1
    chunks = [it for it in items if isinstance(it, TextPassage) and "chunk" in it.meta]
    assert "".join(c.text for c in chunks) == long.text and all(c.subject == "s" for c in chunks)
    encoded, cut = encode_items(tiny_tokenizer, chunks, max_length=24)
    assert cut == 0 and all(len(e.input_ids) <= 24 for e in encoded)


def test_the_method_table_says_which_methods_take_text():
    text = {name for name, cls in METHODS.items() if cls.accepts_text}
    assert {"ga", "graddiff", "npo", "simnpo", "rmu", "task_vector"} <= text
    assert not text & {"idk_sft", "idk_dpo", "altpo", "snap", "whp", "eco", "guard", "icul"}
    wagle = get_method("wagle")
    assert takes_text(wagle, wagle.Config(base="npo")) and not takes_text(wagle, wagle.Config(base="idk_sft"))
    with pytest.raises(Exception, match="idk_sft needs QA items"):
        check_item_kinds(get_method("idk_sft"), [TextPassage("x")], "passages.jsonl")


def test_methods_list_has_a_data_column(monkeypatch, capsys):
    code, out, err = run_cli(["methods", "--json"], monkeypatch, capsys)
    assert code == 0, err
    rows = {row["name"]: row["data"] for row in json.loads(out)}
    assert rows["npo"] == "QA or text" and rows["idk_dpo"] == "QA"


@pytest.fixture
def model_dir(tmp_path, tiny_tokenizer) -> Path:
    from obliviate.models.loading import save_model

    return save_model(make_tiny_llama(), tiny_tokenizer, tmp_path / "model")


def test_unlearn_npo_on_a_file_of_passages_trains_and_reports_chunks(tmp_path, model_dir, monkeypatch, capsys):
    forget = _write_jsonl(tmp_path / "passages.jsonl", [{"text": " ".join(PASSAGES * 3)}, {"text": PASSAGES[0]}])
    retain = _write_jsonl(tmp_path / "retain.jsonl", [{"text": PASSAGES[1]}])
    code, out, err = run_cli(["unlearn", "--method", "npo", "--model", str(model_dir), "--forget", str(forget),
                              "--retain", str(retain), "--out", str(tmp_path / "run"), "--set", "max_steps=2",
                              "--set", "max_length=24", "--set", "batch_size=2"], monkeypatch, capsys)
    assert code == 0, err
    assert "long forget passages split into chunks" in out and "1 passages into" in out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    summary = config["unlearn"]
    assert summary["steps"] == 2 and summary["chunks"]["forget"]["passages"] == 1
    assert summary["chunks"]["forget"]["chunks"] > 1 and summary["truncated"]["forget"] == 0
    assert (tmp_path / "run" / "model").is_dir()
    # forget passages only: plain NPO (no retain term), said in one line; KL cannot drop its retain term
    args = ["unlearn", "--model", str(model_dir), "--forget", str(forget), "--set", "max_steps=1"]
    code, out, err = run_cli([*args, "--method", "npo", "--out", str(tmp_path / "plain")], monkeypatch, capsys)
    assert code == 0, err
    assert "without its retain term (retain_loss=none)" in out
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["method_config"]["retain_loss"] == "none"
    code, _, err = run_cli([*args, "--method", "kl", "--out", str(tmp_path / "kl")], monkeypatch, capsys)
    assert_one_line_error(code, err, "kl trains on a retain set too", "no --retain set is given")


def test_a_qa_only_method_refuses_text_in_one_line(tmp_path, monkeypatch, capsys):
    forget = _write_jsonl(tmp_path / "passages.jsonl", [{"text": t} for t in PASSAGES])
    code, _, err = run_cli(["unlearn", "--method", "idk_sft", "--model", "none", "--forget", str(forget),
                            "--out", str(tmp_path / "run")], monkeypatch, capsys)
    assert_one_line_error(code, err, "idk_sft needs QA items", "passages.jsonl", "npo")


def test_unlearn_on_the_muse_corpus_fixture(tmp_path, model_dir, monkeypatch, capsys):
    code, out, err = run_cli(["unlearn", "--method", "graddiff", "--model", str(model_dir), "--data",
                              f"muse:news@{MUSE}", "--out", str(tmp_path / "run"), "--set", "max_steps=2",
                              "--set", "max_length=32"], monkeypatch, capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"] == f"muse:news@{MUSE.resolve()}"
    assert config["unlearn"]["chunks"]["forget"] == {"passages": 1, "chunks": config["unlearn"]["chunks"]["forget"]
                                                     ["chunks"]} and config["unlearn"]["steps"] == 2


def test_npo_unlearns_the_worlds_biographies(tmp_path, tiny_tokenizer):
    from obliviate.methods.npo import NPO, NPOConfig
    from obliviate.world import get_world

    world = get_world("tiny", 0)
    forget = world.passages(world.splits["forget10"])[:4]
    retain = world.passages(world.retain_pids("forget10"))[:4]
    assert all(p.prefix and p.continuation for p in forget)  # the loss runs on the continuations
    model = make_tiny_llama()
    before = [p.detach().clone() for p in model.parameters()]
    summary = NPO(NPOConfig(max_steps=2, batch_size=2, max_length=64)).unlearn(
        model, tiny_tokenizer, forget, retain, tmp_path / "run", progress=False)
    assert summary["steps"] == 2 and summary["final"]["loss"] == summary["final"]["loss"]
    assert any((a != b).any() for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("name", [name for name, cls in METHODS.items() if cls.accepts_text])
def test_every_method_that_takes_text_trains_on_passages(name, tiny_tokenizer, tmp_path):
    from tests.conftest import make_tiny_mixtral

    cls = get_method(name)
    fields = cls.Config.model_fields
    settings = {"max_steps": 1, "batch_size": 2, "epochs": 1, "importance_data": "retain"}  # SSD: D = the retain set
    config = cls.Config(**{k: v for k, v in settings.items() if k in fields})
    model = make_tiny_mixtral() if cls.needs_moe else make_tiny_llama()
    forget = [TextPassage(PASSAGES[0]), TextPassage("Alice and Bob met in London", "Alice and Bob", " met in London")]
    retain = [TextPassage("one two three four five six seven eight nine ten yes no maybe")]
    before = [p.detach().clone() for p in model.parameters()]
    method = cls(config)
    method.unlearn(model, tiny_tokenizer, forget, retain, tmp_path / "run", progress=False)
    if getattr(cls, "exact", False):  # s3t trains LoRA slices on the passages, then drops those that saw forget ones
        logs = [json.loads(line) for log in (tmp_path / "run" / "slices").glob("*/train_log.jsonl")
                for line in log.read_text().splitlines()]
        assert logs and all(math.isfinite(row["loss"]) for row in logs), name
        assert method.ensemble.last_deletion["items"] == len(forget)
        return
    assert any((a != b).any() for a, b in zip(before, model.parameters(), strict=True)), name
