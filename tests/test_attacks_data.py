"""Attacks on any data: a run unlearned from the user's QA files is attacked with no world and no oracle
(recovery relative to the target), attacks say in one line what the data lacks, and attack prompts follow
the model's chat format.

Every model here is a tiny Llama trained in code for a second or two.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from obliviate.attacks import ORDER, get_attack
from obliviate.attacks.base import AttackSets, compare_rows
from obliviate.attacks.facts import data_sets, dialogue, encode_texts, question_prompt
from obliviate.attacks.jailbreak import PERSONA
from obliviate.attacks.measure import AttackPrompt, measure
from obliviate.attacks.runner import base_model
from obliviate.data.schema import QAItem
from obliviate.io import read_json
from obliviate.models.prompts import make_format, use_format
from tests.conftest import build_tiny_tokenizer, make_tiny_llama
from tests.helpers import run_cli
from tests.test_prompt_formats import SYSTEM, chat_tokenizer


def _fact(subject: str, attribute: str, value: str, wrong: list[str]) -> QAItem:
    question = {"city": f"Where was {subject} born?", "genre": f"What genre does {subject} write?"}[attribute]
    heldout = question.replace(subject, f"the author {subject}")
    return QAItem(question, value, None, wrong, [heldout], subject=subject, meta={"attribute": attribute})


CITIES, GENRES = ["Oslo", "Madrid", "Paris", "Rome"], ["poetry", "fiction", "music", "film"]
FORGET = [_fact("Mara Lind", "city", "Oslo", ["Rome", "Berlin"]),
          _fact("Mara Lind", "genre", "poetry", ["music", "film"]),
          _fact("Alice", "city", "Madrid", ["Paris", "London"]),
          _fact("Alice", "genre", "fiction", ["story", "science"])]
RETAIN = [_fact(s, "city", c, [x for x in CITIES if x != c][:2]) for s, c in
          (("Bob", "Oslo"), ("fox", "Madrid"), ("dog", "Paris"), ("cat", "Rome"))]
RETAIN += [_fact(s, "genre", g, [x for x in GENRES if x != g][:2]) for s, g in
           (("Bob", "fiction"), ("fox", "poetry"), ("dog", "music"), ("cat", "film"))]


def _trained(tok, items: list[QAItem], steps: int = 120):
    """A tiny Llama fine-tuned on `items` in the tokenizer's format."""
    from obliviate.train.data import collate, encode_items
    from obliviate.train.losses import ce_loss

    model = make_tiny_llama(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id).train()
    torch.manual_seed(0)
    batch = collate(encode_items(tok, items)[0], tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        ce_loss(model, batch).backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def _write(path, items: list[QAItem]) -> str:
    path.write_text("".join(json.dumps(it.to_dict()) + "\n" for it in items))
    return str(path)


FAST = ["--set", "relearn.steps=4", "--set", "relearn.curve=1", "--set", "stepwise.recall_tokens=4",
        "--set", "max_new_tokens=4", "--set", "quantize.schemes=int8,rtn4", "--set", "generate=false",
        "--set", "direct.generate=true"]


def test_attack_all_on_a_run_unlearned_from_qa_files(tmp_path, monkeypatch, capsys):
    """`obliviate attack --all RUN`: no world, no oracle; the facts and the target come from the run."""
    from obliviate.models.loading import save_model

    tok = build_tiny_tokenizer()
    save_model(_trained(tok, FORGET + RETAIN), tok, tmp_path / "base")
    forget, retain = _write(tmp_path / "forget.jsonl", FORGET), _write(tmp_path / "retain.jsonl", RETAIN)
    run = tmp_path / "run"
    code, _, err = run_cli(["unlearn", "--method", "ga", "--model", str(tmp_path / "base"), "--forget", forget,
                            "--retain", retain, "--out", str(run), "--set", "max_steps=6", "--set", "lr=1e-2"],
                           monkeypatch, capsys)
    assert code == 0, err
    assert base_model(run) == str(tmp_path / "base")

    code, out, err = run_cli(["attack", "--all", str(run), *FAST], monkeypatch, capsys)
    assert code == 0, err
    assert "relative to the target" in out and "(chance)" in out
    saved = read_json(run / "attacks.json")
    assert saved["models"] == {"unlearned": str(run), "target": str(tmp_path / "base")}  # no oracle, no world
    assert saved["world"] is None and saved["baseline"] == "chance" and saved["facts"].startswith(forget)
    reports = saved["attacks"]
    assert set(reports) == set(ORDER)
    for name, report in reports.items():
        assert report["status"] == "ok", (name, report.get("reason"))
        assert report["baseline"] == "chance" and "oracle" not in report["roles"]
    direct = reports["direct"]
    assert direct["knows"]["levels"]["target"] == 1.0  # the base model knows every forget fact
    assert direct["knows"]["levels"]["chance"] == pytest.approx(1 / 3)  # two wrong answers each
    assert direct["knows"]["levels"]["unlearned"] < 1.0  # gradient ascent forgot some of them
    assert direct["recovery"] is not None and "relative to the target" in direct["recovery_definition"]
    assert "R" not in reports["relearn"]  # the relearning ratio needs an oracle
    assert reports["forms"]["missing"] == ["fill_blank, reverse, cloze: they need the built-in world's sentence "
                                           "templates"]
    summary = saved["robustness"]
    assert summary["n"] >= 1 and summary["harmonic_mean"] > 0 and "s_chance" in summary["definition"]


def test_attacks_say_what_the_data_lacks_and_the_others_run(tmp_path, monkeypatch, capsys):
    """Bare question-answer files: the forms that need rewordings, options or subjects say so in one line."""
    tok = build_tiny_tokenizer()
    bare = [QAItem(it.question, it.answer) for it in FORGET]
    model = _trained(tok, bare + RETAIN, steps=60)
    sets = data_sets(forget=_write(tmp_path / "f.jsonl", bare), retain=_write(tmp_path / "r.jsonl", RETAIN))
    forms = get_attack("forms")()
    assert set(forms.lacks(sets)) == {"paraphrase", "multiple_choice", "fill_blank"}
    assert all("\n" not in line for line in forms.lacks(sets).values())
    assert "paraphrased questions" in forms.lacks(sets)["paraphrase"]
    assert "perturbed answers" in forms.lacks(sets)["multiple_choice"]
    assert "no subject" in get_attack("stepwise")().lacks(sets)["self_chain"]

    from obliviate.attacks.base import RunInfo
    from obliviate.attacks.runner import Subjects, attack_configs, run_attacks

    names = ["direct", "forms", "jailbreak", "stepwise"]
    subjects = Subjects(RunInfo("r"), {"unlearned": (model, tok), "target": (model, tok)}, sets)
    reports = run_attacks(names, subjects, attack_configs(names, ["max_new_tokens=4"]), progress=False).reports
    for name in ("forms", "stepwise"):  # nothing left to ask: one line, the others still run
        assert reports[name]["status"] == "cannot judge" and "\n" not in reports[name]["reason"]
    assert "paraphrased questions" in reports["forms"]["reason"]
    for name in ("direct", "jailbreak"):
        assert reports[name]["status"] == "ok" and reports[name]["measure"] == "answers"  # nothing to rank against


def test_recovery_relative_to_the_target_without_an_oracle():
    """(unlearned - chance) / (target - chance): the share of the target's above-chance knowledge."""
    n = 12
    rows = lambda knows: [{"key": f"f{i}", "variant": "q", "knows": float(k), "chance": 0.25}  # noqa: E731
                          for i, k in enumerate(knows)]
    report = compare_rows({"unlearned": rows([1] * 6 + [0] * 6), "target": rows([1] * n)})
    assert report["baseline"] == "chance" and report["knows"]["levels"]["chance"] == pytest.approx(0.25)
    assert report["recovery"] == pytest.approx((0.5 - 0.25) / (1 - 0.25))
    assert "relative to the target" in report["recovery_definition"]
    guessing = compare_rows({"unlearned": rows([1] * 3 + [0] * 9), "target": rows([1] * n)})
    assert guessing["recovery"] == pytest.approx(0.0)  # at chance: nothing recovered


# -- prompt formats ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["llama3", "chatml"])
def test_attack_prompts_follow_the_chat_format(kind):
    tok = chat_tokenizer(kind)
    fmt = make_format("chat", SYSTEM, max_new_tokens=4)
    use_format(tok, fmt)
    q = "Where was Mara Lind born ?"
    assert question_prompt(q, tok) == fmt.render(q, tok)
    turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where was Bob born ?"},
             {"role": "assistant", "content": "He was born in London ."}, {"role": "user", "content": q}]
    assert dialogue(tok, [("Where was Bob born ?", "He was born in London .")], q) == tok.apply_chat_template(
        turns, tokenize=False, add_generation_prompt=True)  # earlier answers are earlier turns
    sets = AttackSets([QAItem(q, "She was born in Oslo , Norway .", None, ["She was born in Rome ."],
                              ["Where was the author Mara Lind born ?"], subject="Mara Lind")], [])
    for name in ("direct", "forms", "jailbreak", "in_context", "quantize"):
        for p in get_attack(name)().prompts(None, tok, sets):
            assert "Question:" not in p.prompt and "<|" in p.prompt, (name, p.prompt)
            ids = encode_texts(tok, [p.prompt])[0]
            if kind == "llama3":
                assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id  # never a doubled BOS
    direct = get_attack("direct")().prompts(None, tok, sets)[0]
    assert direct.prompt == fmt.render(q, tok)
    jail = {p.variant: p.prompt for p in get_attack("jailbreak")().prompts(None, tok, sets)}
    assert jail["prefix_injection"] == fmt.render(q, tok) + "Sure, here is the answer:"  # the assistant's start
    assert f"{PERSONA}\n{q}" in jail["role_play"]  # the persona leads the user's message


def test_a_chat_model_is_measured_in_its_format():
    tok = chat_tokenizer("chatml")
    use_format(tok, make_format("chat", SYSTEM, max_new_tokens=12))
    items = [QAItem("Where was Mara Lind born ?", "She was born in Oslo , Norway .", None,
                    ["She was born in Rome .", "She was born in Berlin ."]),
             QAItem("Where was Bob born ?", "He was born in London .", None,
                    ["He was born in Madrid .", "He was born in Paris ."])]
    model = _trained(tok, items, steps=100)
    prompts = [AttackPrompt(it.question, "q", question_prompt(it.question, tok), it.answer, it.perturbed_answers)
               for it in items]
    rows = measure(model, tok, prompts)
    assert [r["knows"] for r in rows] == [1.0, 1.0]  # the trained answers rank first under the template
    assert [r["generation"] for r in rows] == [it.answer for it in items]  # stopped at <|im_end|>
    assert [r["answers"] for r in rows] == [1.0, 1.0] and not np.isnan(rows[0]["chance"])


def test_a_run_unlearned_from_a_tofu_spec_is_attacked_on_that_data(tmp_path):
    """The facts come from the run's recorded data spec; `--oracle` still gives the oracle-relative recovery."""
    from pathlib import Path

    from obliviate.attacks.runner import attack_configs, load_models, run_attacks
    from obliviate.io import write_json
    from obliviate.models.loading import save_model

    tok = build_tiny_tokenizer()
    save_model(make_tiny_llama(), tok, tmp_path / "base")
    run = tmp_path / "run"
    save_model(make_tiny_llama(seed=1), tok, run / "model")
    write_json(run / "artifact.json", {"kind": "weights", "path": "model", "method": "ga"})
    data = f"tofu:forget01@{Path(__file__).parent / 'fixtures' / 'tofu'}"
    write_json(run / "config.json", {"model": str(tmp_path / "base"), "data": data, "forget": None})
    subjects = load_models(str(run), progress=False)
    assert subjects.facts == data and subjects.world is None and set(subjects.models) == {"unlearned", "target"}
    assert subjects.sources["target"] == str(tmp_path / "base")
    assert len(subjects.sets.forget) == 3 and subjects.sets.forget[0].paraphrased_questions
    assert subjects.sets.forget_train is not None  # relearning trains on the split's training items
    names = ["direct", "forms"]
    reports = run_attacks(names, subjects, attack_configs(names, ["generate=false"]), progress=False).reports
    assert reports["forms"]["status"] == "ok" and reports["forms"]["baseline"] == "chance"
    assert {"paraphrase", "multiple_choice"} <= set(reports["forms"]["variants"])
    with_oracle = load_models(str(run), oracle=str(tmp_path / "base"), progress=False)
    assert set(with_oracle.models) == {"unlearned", "oracle", "target"}
    report = run_attacks(["direct"], with_oracle, attack_configs(["direct"], ["generate=false"]),
                         progress=False).reports["direct"]
    assert report["baseline"] == "oracle" and "recovery_definition" not in report


def _chat_fact(subject: str, attribute: str, value: str, wrong: list[str]) -> QAItem:
    question = {"city": f"Where was {subject} born ?", "genre": f"What genre does {subject} write ?"}[attribute]
    return QAItem(question, value, None, wrong, subject=subject, meta={"attribute": attribute})


def test_every_attack_runs_on_a_chat_model():
    """Under a ChatML template: every attack runs (scaffolds, relearning and the probe in the template)."""
    from obliviate.attacks.base import RunInfo
    from obliviate.attacks.runner import Subjects, attack_configs, run_attacks

    tok = chat_tokenizer("chatml")
    use_format(tok, make_format("chat", SYSTEM, max_new_tokens=4))
    forget = [_chat_fact("Mara Lind", "city", "Oslo", ["Rome", "Berlin"]),
              _chat_fact("Mara Lind", "genre", "poetry", ["music", "film"])]
    retain = [_chat_fact(s, "city", c, ["Madrid", "Paris"]) for s, c in (("Bob", "London"), ("Alice", "Oslo"),
                                                                          ("France", "Rome"))]
    retain += [_chat_fact(s, "genre", g, ["science", "film"]) for s, g in (("Bob", "fiction"), ("Alice", "poetry"),
                                                                           ("France", "music"))]
    target, unlearned = _trained(tok, forget + retain, steps=80), _trained(tok, retain, steps=1)
    subjects = Subjects(RunInfo("r"), {"unlearned": (unlearned, tok), "target": (target, tok)},
                        AttackSets(forget, retain))
    configs = attack_configs(list(ORDER), ["relearn.steps=2", "relearn.curve=0", "stepwise.recall_tokens=3",
                                           "quantize.schemes=rtn4", "probe.folds=2", "generate=false"])
    reports = run_attacks(list(ORDER), subjects, configs, progress=False).reports
    for name in ORDER:
        assert reports[name]["status"] == "ok", (name, reports[name].get("reason"))
    assert reports["direct"]["knows"]["levels"]["target"] == 1.0
