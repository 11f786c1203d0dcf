"""The MUSE-style text suite: PrivLeak's formula and orientation, the MUSE adapter, VerbMem and
KnowMem on a tiny model that memorised one passage, and target vs oracle on the tiny world."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from obliviate import metrics as M
from obliviate.data.adapters.muse import MuseData, load_muse
from obliviate.data.schema import QAItem, TextPassage
from obliviate.errors import DataError
from obliviate.evals.text import (
    OracleAUC,
    TextSuiteConfig,
    knowmem_prompt,
    knowmem_scores,
    mann_whitney_auc,
    privleak_summary,
    run_text_suite,
    verbmem_scores,
)
from tests.helpers import assert_one_line_error, run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "muse"


# -- PrivLeak: formula and orientation --------------------------------------------------------------------


def test_privleak_against_a_hand_computed_example():
    # Min-K% scores (higher = more member-like). MUSE's AUC counts holdout-over-forget pairs:
    # holdout -2 beats forget -3 and ties -2 (1.5), -0.5 beats all three (3), -4 and -5 beat none:
    # 4.5 of 12 pairs -> 0.375.
    forget, holdout = np.array([-1.0, -2.0, -3.0]), np.array([-2.0, -0.5, -4.0, -5.0])
    # Oracle: holdout -1.2 beats forget -1.5 only; -2 beats none -> 1 of 4 pairs -> 0.25.
    oracle_forget, oracle_holdout = np.array([-1.0, -1.5]), np.array([-1.2, -2.0])
    assert M.muse_auc(forget, holdout) == pytest.approx(0.375)
    assert M.muse_auc(oracle_forget, oracle_holdout) == pytest.approx(0.25)
    # (0.375 - 0.25) / 0.25 * 100 = +50: the forget set now looks less familiar than the oracle finds it.
    assert M.muse_privleak(0.375, 0.25) == pytest.approx(50.0)
    oracle = OracleAUC.from_scores(oracle_forget, oracle_holdout)
    summary = privleak_summary(forget, holdout, oracle, n_boot=200)
    assert summary["privleak"]["value"] == pytest.approx(50.0)
    assert summary["privleak"]["auc"] == pytest.approx(0.375)
    assert summary["privleak"]["auc_oracle"] == pytest.approx(0.25)
    assert summary["privleak"]["ci_low"] <= 50.0 <= summary["privleak"]["ci_high"]
    # A fully memorised forget set (AUC 0) against MUSE's published News oracle AUC: -100.
    assert M.muse_privleak(0.0, 0.4772) == pytest.approx(-100.0)


def test_muse_auc_orientation_and_privleak_sign():
    rng = np.random.default_rng(0)
    holdout = rng.normal(-5.0, 1.0, 40)
    remembered = rng.normal(-1.0, 0.3, 20)  # members scored as far more likely than the holdout
    never_seen = rng.normal(-5.0, 1.0, 20)
    suppressed = rng.normal(-12.0, 1.0, 20)  # pushed below text the model never saw
    auc_target = M.muse_auc(remembered, holdout)
    auc_oracle = M.muse_auc(never_seen, holdout)
    auc_over = M.muse_auc(suppressed, holdout)
    assert auc_target < 0.05  # MUSE's orientation: memorised -> near 0, not near 1
    assert 0.3 < auc_oracle < 0.7
    assert auc_over > 0.95
    assert M.muse_privleak(auc_target, auc_oracle) < -80  # under-unlearning: strongly negative
    assert M.muse_privleak(auc_over, auc_oracle) > 40  # over-unlearning: positive
    # the usual membership AUC (members labelled 1) is the mirror image
    assert M.mia_auc(remembered, holdout)["auc"] == pytest.approx(1 - auc_target)


def test_mann_whitney_auc_equals_the_roc_auc_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(20):
        forget, holdout = rng.integers(0, 5, rng.integers(1, 9)), rng.integers(0, 5, rng.integers(1, 9))
        assert mann_whitney_auc(holdout, forget) == pytest.approx(M.muse_auc(forget, holdout))


def test_privleak_of_a_model_against_its_own_scores_is_zero_with_a_paired_ci():
    rng = np.random.default_rng(2)
    forget, holdout = rng.normal(size=8), rng.normal(size=12)
    summary = privleak_summary(forget, holdout, OracleAUC.from_scores(forget, holdout), n_boot=300)
    assert summary["privleak"]["paired"] is True
    assert summary["privleak"]["value"] == 0.0
    assert summary["privleak"]["ci_low"] == summary["privleak"]["ci_high"] == 0.0
    fixed = privleak_summary(forget, holdout, OracleAUC(0.5), n_boot=300)["privleak"]
    assert fixed["paired"] is False and fixed["ci_low"] < fixed["ci_high"]


# -- the MUSE adapter -------------------------------------------------------------------------------------


def _fixture_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = json.loads(path.read_text())
    return [{"text": r} if isinstance(r, str) else r for r in rows]


def _content(data: MuseData) -> dict[str, list]:
    """Every set's text fields, without the source-dependent meta."""
    def fields(it):
        return (it.question, it.answer) if isinstance(it, QAItem) else (it.text, it.prefix, it.continuation)

    return {name: [fields(it) for it in items] for name, items in data.sets().items()}


def test_adapter_reads_the_fixture():
    data = load_muse(FIXTURE)
    sizes = {name: len(items) for name, items in data.sets().items()}
    assert sizes == {"verbmem": 3, "knowmem_forget": 3, "knowmem_retain": 3, "knowmem_forget_icl": 2,
                     "knowmem_retain_icl": 2, "privleak_forget": 3, "privleak_holdout": 3,
                     "privleak_retain": 2}
    first = data.verbmem[0]
    assert first.prefix.endswith("ferry from Ostrand") and first.continuation.startswith(" docked")
    assert first.text == first.prefix + first.continuation
    assert data.knowmem_retain[2].answer == "1987"  # a number in the file reads as its text
    assert data.privleak_forget[1].text.startswith("In her third novel")  # a JSON list of plain strings
    assert data.privleak_holdout[0].meta["muse"].endswith("holdout.jsonl")


def test_adapter_reads_the_hub_file_layout(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in FIXTURE.rglob("*.json*"):
        rows = [{k: str(v) for k, v in r.items()} for r in _fixture_rows(path)]
        target = tmp_path / path.parent.name / f"{path.stem}-00000-of-00001.parquet"
        target.parent.mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), target)
    assert _content(load_muse(tmp_path)) == _content(load_muse(FIXTURE))


def test_adapter_loads_the_hub_by_name_with_older_split_names(monkeypatch):
    import datasets

    renamed = {"retain_qa": "retain2_qa", "retain_qa_icl": "retain2_qa_icl", "retain": "retain2"}
    files = {(p.parent.name, renamed.get(p.stem, p.stem)): p for p in FIXTURE.rglob("*.json*")}
    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if (config, split) not in files:
            raise ValueError(f"Unknown split {split!r}")
        return datasets.Dataset.from_list([{k: str(v) for k, v in r.items()}
                                           for r in _fixture_rows(files[config, split])])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = load_muse("news")
    assert hub.source == "muse-bench/MUSE-News"
    assert {c[0] for c in calls} == {"muse-bench/MUSE-News"}
    assert ("muse-bench/MUSE-News", "knowmem", "retain_qa") in calls  # the current name is tried first
    assert _content(hub) == _content(load_muse(FIXTURE))


def _copy_fixture(tmp_path: Path) -> Path:
    import shutil

    root = tmp_path / "muse"
    shutil.copytree(FIXTURE, root)
    return root


def test_adapter_errors_name_the_file_line_and_field(tmp_path):
    root = _copy_fixture(tmp_path)
    (root / "verbmem" / "forget.json").unlink()
    bad = root / "verbmem" / "forget.jsonl"
    bad.write_text('{"prompt": "A", "gt": " b"}\n{"prompt": "C"}\n')
    with pytest.raises(DataError, match=rf"^{bad}:2: field 'gt' missing$"):
        load_muse(root)
    bad.write_text('{"prompt": "A", "gt": ["not", "text"]}\n')
    with pytest.raises(DataError, match=rf"^{bad}:1: field 'gt' must be a string$"):
        load_muse(root)
    bad.unlink()
    with pytest.raises(DataError, match=r"verbmem: no file for split 'forget'"):
        load_muse(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no MUSE subset folder"):
        load_muse(tmp_path / "empty")
    with pytest.raises(DataError, match="expected a directory"):
        load_muse(FIXTURE / "knowmem" / "forget_qa.json")


def test_adapter_keeps_optional_parts_optional(tmp_path):
    import shutil

    root = _copy_fixture(tmp_path)
    shutil.rmtree(root / "knowmem")  # as MUSE-Books on GitHub
    (root / "privleak" / "retain.json").unlink()
    data = load_muse(root)
    assert not data.knowmem_forget and not data.privleak_retain
    assert len(data.verbmem) == 3 and len(data.privleak_holdout) == 3


def test_cli_bad_muse_data_is_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys):
    root = _copy_fixture(tmp_path)
    bad = root / "knowmem" / "forget_qa.json"
    bad.write_text('[{"question": "Q1", "answer": "A1"}, {"answer": "A2"}]')
    code, _, err = run_cli(["eval", "no-such-model", "--suite", "text", "--forget", str(root),
                            "--out", str(tmp_path / "out")], monkeypatch, capsys)
    assert_one_line_error(code, err, f"{bad}:2: field 'question' missing")
    code, _, err = run_cli(["eval", "no-such-model", "--suite", "text", "--retain", "r.jsonl",
                            "--out", str(tmp_path / "out")], monkeypatch, capsys)
    assert code == 2 and "--retain is not used by the text suite" in err


# -- VerbMem and KnowMem on a tiny model that memorised one passage ---------------------------------------

SEEN = "The quick brown fox jumps over the lazy dog. A red cat sleeps on a warm mat."
UNSEEN = "Alice and Bob met in London, then travelled to Rome, Berlin and Madrid by train."
QA = ("Where was the author born?", "She was born in Oslo, Norway.")
OTHER_QA = ("When did the river flood the old town?", "It flooded in the spring of 1921.")


def _split(text: str, n_words: int) -> TextPassage:
    words = text.split(" ")
    return TextPassage(text, " ".join(words[:n_words]), " " + " ".join(words[n_words:]))


@pytest.fixture(scope="module")
def memorised():
    """A tiny Llama trained for 80 steps on SEEN and one QA pair (in the knowmem prompt format)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import build_tiny_tokenizer, make_tiny_llama

    tok = build_tiny_tokenizer()
    model = make_tiny_llama()
    texts = [SEEN, knowmem_prompt(QA[0]) + " " + QA[1]]
    seqs = [torch.tensor([tok(t)["input_ids"] + [tok.eos_token_id]]) for t in texts]
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(80):
        loss = sum(model(input_ids=x, labels=x).loss for x in seqs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok


CFG = TextSuiteConfig(verbmem_max_new_tokens=None, n_boot=200)


def test_verbmem_is_one_for_the_memorised_passage_and_low_for_an_unseen_one(memorised):
    model, tok = memorised
    vm = verbmem_scores(model, tok, [_split(SEEN, 5), _split(UNSEEN, 5)], CFG)
    assert vm["references"][0] == "over the lazy dog. A red cat sleeps on a warm mat."
    assert vm["rouge"][0] > 0.95
    assert vm["rouge"][1] < 0.5
    # scaled to the passages: as many new tokens as the longest true continuation
    assert vm["max_new_tokens"] == max(len(tok(p.continuation, add_special_tokens=False)["input_ids"])
                                       for p in (_split(SEEN, 5), _split(UNSEEN, 5)))


def test_knowmem_recalls_the_trained_answer_only(memorised):
    model, tok = memorised
    km = knowmem_scores(model, tok, [QAItem(*QA), QAItem(*OTHER_QA)], cfg=CFG)
    assert km["rouge"][0] > 0.95
    assert km["rouge"][1] < 0.5
    icl = [QAItem("What is the capital of France?", "Paris.")]
    assert knowmem_prompt(QA[0], icl) == ("Question: What is the capital of France?\nAnswer: Paris.\n\n"
                                          f"Question: {QA[0]}\nAnswer:")


def test_suite_on_the_tiny_model(memorised):
    model, tok = memorised
    holdout = [TextPassage(UNSEEN), TextPassage("one two three four five six seven eight")]
    data = MuseData(verbmem=[_split(SEEN, 5)], knowmem_forget=[QAItem(*QA)],
                    knowmem_retain=[QAItem(*OTHER_QA)], privleak_forget=[TextPassage(SEEN)],
                    privleak_holdout=holdout, source="tiny")
    result = run_text_suite(model, tok, data, OracleAUC(0.5), CFG)
    agg = result.aggregates
    assert agg["verbmem_forget/rouge"]["value"] > 0.95
    assert agg["verbmem_forget/rouge"]["higher_is_better"] is False
    assert agg["knowmem_retain/rouge"]["higher_is_better"] is True
    assert agg["mia/muse_auc"]["value"] == 0.0  # the memorised passage out-scores both unseen ones
    assert agg["privleak"]["value"] == pytest.approx(-100.0)
    sets = {row["set"] for row in result.items()}
    assert sets == {"verbmem_forget", "knowmem_forget", "knowmem_retain", "privleak_forget",
                    "privleak_holdout"}


# -- the tiny world: target vs oracle ---------------------------------------------------------------------


@pytest.mark.slow
def test_world_target_remembers_and_the_oracle_does_not(tmp_path, monkeypatch, capsys, world_home):
    from obliviate.workflow import WorldRef, world_models

    models = world_models(WorldRef("tiny", 0, "forget10"), which=("target", "oracle"), progress=False)
    # The oracle against the world's oracle (the default): PrivLeak exactly 0.
    code, out, err = run_cli(["eval", str(models.oracle), "--suite", "text", "--world", "tiny",
                              "--out", str(tmp_path / "oracle"), "--json"], monkeypatch, capsys)
    assert code == 0, err
    oracle = json.loads(out)["aggregates"]
    assert oracle["privleak"]["value"] == 0.0
    # The target, with the oracle's saved per-item scores standing in for the oracle model.
    code, out, err = run_cli(["eval", "world:tiny", "--suite", "text", "--oracle", str(tmp_path / "oracle"),
                              "--out", str(tmp_path / "target"), "--json"], monkeypatch, capsys)
    assert code == 0, err
    target = json.loads(out)["aggregates"]
    for key in ("verbmem_forget/rouge", "knowmem_forget/rouge"):
        assert target[key]["value"] > oracle[key]["value"] + 0.3, key
        assert target[key]["ci_low"] > oracle[key]["ci_high"], key
    assert target["privleak"]["auc_oracle"] == pytest.approx(oracle["mia/muse_auc"]["value"])
    assert target["mia/muse_auc"]["value"] < 0.1 and target["privleak"]["value"] < -60
    # retain knowledge is the utility both keep
    assert min(target["knowmem_retain/rouge"]["value"], oracle["knowmem_retain/rouge"]["value"]) > 0.8
    saved = json.loads((tmp_path / "target" / "text_results.json").read_text())
    assert saved["aggregates"]["privleak"]["value"] == pytest.approx(target["privleak"]["value"])
    assert not (tmp_path / "target" / "results.json").exists()  # the qa suite's file is left alone
