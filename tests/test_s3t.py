"""S3T (methods/s3t.py, interventions/sharded.py) on a tiny Llama built in code, CPU, fixed seeds.

(a) exactness: deleting an item and retraining yields bit for bit the adapters of an ensemble trained
without it; (b) without retraining, no layer that saw the item is left in the ensemble (in memory or
saved); (c) loss logged, trainable parameters change, and the ensemble learns its data and forgets the
deleted items; save/load and the run-directory path restore the same model.
"""

from __future__ import annotations

import json

import pytest
import torch

from obliviate.data.schema import QAItem, TextPassage
from obliviate.errors import ConfigError
from obliviate.interventions.sharded import adapter_parameters
from obliviate.methods import METHODS, get_method
from obliviate.methods.s3t import S3TConfig, S3TEnsemble, item_id
from obliviate.models.scoring import score_qa
from tests.conftest import build_tiny_tokenizer, make_tiny_llama

torch.set_num_threads(1)

ITEMS = [
    QAItem("Where was the author born?", "She was born in Oslo, Norway.", subject="a"),
    QAItem("Who wrote the book about the blue whale?", "Mara Lind wrote it in 1998.", subject="a"),
    QAItem("What genre does the author write?", "He writes science fiction and poetry.", subject="b"),
    QAItem("When did the river flood the old town?", "It flooded in the spring of 1921.", subject="c"),
    QAItem("What is the capital of France?", "The capital of France is Paris.", subject="d"),
    QAItem("Who met in London?", "Alice and Bob met in London.", subject="e"),
    TextPassage("The quick brown fox jumps over the lazy dog.", subject="f"),
]
FAST = dict(shards=2, slices=2, sequences=2, r=4, alpha=8, epochs=2, batch_size=2, lr=1e-2, group_by="item")


def _config(**kw) -> S3TConfig:
    return S3TConfig(**{**FAST, **kw})


def answer_logprobs(model, tok, items) -> torch.Tensor:
    """Mean log-probability per answer token, one per item."""
    scores = score_qa(model, tok, items, fields=("answer",))
    return torch.tensor([-s["answer"].mean_nll for s in scores])


def _tensors(ens: S3TEnsemble) -> dict[str, torch.Tensor]:
    return ens.intervention().state_tensors()


def _victim(ens: S3TEnsemble) -> str:
    """A trained item whose slice is the first of some shard's sequence 0 (so deleting it hits every layer there)."""
    return next(i for i in sorted(ens.items) if ens.assignment[i][1] == 0)


def test_delete_with_retrain_equals_training_without_the_item():
    tok, base = build_tiny_tokenizer(), make_tiny_llama()
    full = S3TEnsemble.train(base, tok, ITEMS, _config())
    victim = _victim(full)
    full.delete([victim], retrain=True)
    assert full.last_deletion["layers_affected"] >= 2 and 0 < full.last_deletion["cost_fraction"] < 1
    without = S3TEnsemble.train(base, tok, [it for it in ITEMS if item_id(it) != victim], _config())
    a, b = _tensors(full), _tensors(without)
    assert sorted(a) == sorted(b) and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    assert full.shard_adapters() == without.shard_adapters()


def test_delete_without_retrain_drops_every_layer_that_saw_the_item(tmp_path):
    tok, base = build_tiny_tokenizer(), make_tiny_llama()
    ens = S3TEnsemble.train(base, tok, ITEMS, _config())
    victim = _victim(ens)
    shard, data_slice = ens.assignment[victim]
    saw = {n for n, x in ens.layers.items() if x.shard == shard and data_slice in x.data_slices}
    kept = {n: p.detach().clone() for name in ens.model.peft_config if name not in saw
            for n, p in adapter_parameters(ens.model, name).items()}
    ens.delete([victim])
    assert ens.last_deletion["cost_fraction"] == 0 and ens.last_deletion["deactivated_fraction"] > 0
    assert saw and not saw & set(ens.model.peft_config)  # gone from the model
    assert not saw & {n for shard_names in ens.shard_adapters() for n in shard_names}
    for n, p in ens.model.named_parameters():  # the other layers are untouched
        if n in kept:
            assert torch.equal(p, kept[n])
    ens.save(tmp_path / "ens")
    state = json.loads((tmp_path / "ens" / "intervention.json").read_text())
    assert not saw & set(state["config"]["adapters"])
    assert not any(key.split("/")[0] in saw for key in ens.intervention().state_tensors())
    manifest = json.loads((tmp_path / "ens" / "manifest.json").read_text())
    assert victim in manifest["deleted"] and victim not in {i for ids in manifest["slices"].values() for i in ids}
    with pytest.raises(ConfigError, match="not in the ensemble"):
        ens.delete([victim])


def test_training_logs_loss_moves_adapters_and_learns(tmp_path):
    tok, base = build_tiny_tokenizer(), make_tiny_llama()
    cfg = _config(shards=1, slices=2, sequences=1, epochs=15, group_by="subject")
    ens = S3TEnsemble.train(base, tok, ITEMS, cfg, log_dir=tmp_path)
    for name, layer in ens.layers.items():
        rows = [json.loads(line) for line in (tmp_path / "slices" / name / "train_log.jsonl").read_text().splitlines()]
        assert rows and all("ce" in r and r["ce"] == r["ce"] for r in rows)
        assert rows[-1]["ce"] < rows[0]["ce"]
        assert layer.examples > 0
        lora_b = [p for n, p in adapter_parameters(ens.model, name).items() if "lora_B" in n or "embedding_B" in n]
        assert lora_b and all(bool(p.abs().sum() > 0) for p in lora_b)  # B starts at 0, so it moved
    assert all(not p.requires_grad for p in ens.model.parameters())
    qa = [it for it in ITEMS if isinstance(it, QAItem)]
    before = answer_logprobs(base, tok, qa).mean()
    model = ens.wrap()
    learned = answer_logprobs(model, tok, qa).mean()
    assert learned > before + 1.0, (float(before), float(learned))
    # forgetting subject "a" (no retrain) takes its slice's layers away: its answers fall back
    known = answer_logprobs(model, tok, qa[:2]).mean()
    ens.delete([item_id(it) for it in ITEMS if it.subject == "a"])
    after = answer_logprobs(ens.wrap(), tok, qa[:2]).mean()
    assert after < known - 1.0, (float(known), float(after))


def test_save_load_and_run_directory_give_the_same_scores(tmp_path):
    from obliviate.runs import load_run_model, write_intervention_artifact

    tok, base = build_tiny_tokenizer(), make_tiny_llama()
    ens = S3TEnsemble.train(base, tok, ITEMS, _config())
    ens.delete([_victim(ens)])
    qa = [it for it in ITEMS if isinstance(it, QAItem)]
    expected = answer_logprobs(ens.wrap(), tok, qa)
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    ens.save(tmp_path / "run" / "intervention")
    write_intervention_artifact(tmp_path / "run", str(tmp_path / "base"), "s3t", "sharded_ensemble")
    model, tok2 = load_run_model(tmp_path / "run", device="cpu")
    assert torch.allclose(answer_logprobs(model, tok2, qa), expected, atol=1e-5)
    loaded = S3TEnsemble.load(tmp_path / "run" / "intervention", base, tok, ITEMS)
    assert loaded.shard_adapters() == ens.shard_adapters() and loaded.deleted == ens.deleted
    ids = model.generate(**tok2(["Question: What is the capital of France?"], return_tensors="pt"),
                         max_new_tokens=4, do_sample=False)
    assert ids.shape[1] > 0


def test_registered_as_an_exact_method():
    assert "s3t" in METHODS and get_method("s3t").family == "exact"
    with pytest.raises(ValueError):
        S3TConfig(shards=0)


def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    from tests.helpers import assert_one_line_error, run_cli

    forget = tmp_path / "forget.jsonl"
    forget.write_text(json.dumps({"question": "Where?", "answer": "Oslo."}) + "\n")
    code, _, err = run_cli(["unlearn", "--method", "s3t", "--model", "world:tiny", "--forget", str(forget),
                            "--out", str(tmp_path / "run")], monkeypatch, capsys)
    assert_one_line_error(code, err, "world's own data")
    code, _, err = run_cli(["unlearn", "--method", "s3t", "--model", "world:tiny", "--set", "shards=0",
                            "--out", str(tmp_path / "run2")], monkeypatch, capsys)
    assert_one_line_error(code, err, "shards")
    tok = build_tiny_tokenizer()
    with pytest.raises(ConfigError, match="share the id"):
        S3TEnsemble.train(make_tiny_llama(), tok, [ITEMS[0], ITEMS[0]], _config())


def test_finetune_sharded_then_delete_from_the_command_line(tmp_path, monkeypatch, capsys):
    from obliviate.runs import load_run_model
    from tests.helpers import assert_one_line_error, run_cli

    tok, base = build_tiny_tokenizer(), make_tiny_llama()
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    qa = [it for it in ITEMS if isinstance(it, QAItem)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"question": it.question, "answer": it.answer, "subject": it.subject}) + "\n"
                            for it in qa))
    small = [f"--set={k}={v}" for k, v in {**FAST, "group_by": "subject"}.items()]
    code, out, err = run_cli(["finetune-sharded", "--model", str(tmp_path / "base"), "--data", str(data),
                              "--out", str(tmp_path / "full"), *small, "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out[out.index("{"):])["items"] == len(qa)
    code, out, err = run_cli(["delete", str(tmp_path / "full"), "--subjects", "a", "--out", str(tmp_path / "del"),
                              "--json"], monkeypatch, capsys)
    assert code == 0, err
    deletion = json.loads(out[out.index("{"):])["deletion"]
    assert deletion["items"] == 2 and deletion["layers_affected"] >= 1
    manifest = json.loads((tmp_path / "del" / "intervention" / "manifest.json").read_text())
    assert len(manifest["deleted"]) == 2 and sum(len(v) for v in manifest["slices"].values()) == len(qa) - 2
    model, tok2 = load_run_model(tmp_path / "del", device="cpu")
    assert torch.isfinite(answer_logprobs(model, tok2, qa)).all()
    code, _, err = run_cli(["delete", str(tmp_path / "full"), "--subjects", "nobody", "--out",
                            str(tmp_path / "del2")], monkeypatch, capsys)
    assert_one_line_error(code, err, "no item of subject")


def test_mixture_is_the_mean_of_the_shards_sequence_probabilities_and_generation_agrees_with_its_cache():
    from obliviate.interventions.sharded import active_adapters, base_of

    tok, base = build_tiny_tokenizer(), make_tiny_llama()
    ens = S3TEnsemble.train(base, tok, ITEMS, _config(epochs=4))
    wrapped = ens.wrap()
    batch = tok(["Question: Where was the author born?\nAnswer: She was born in Oslo.",
                 "Question: Who met in London?"], return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]

    def sequence_logprob(logits):  # (B,): Σ_t log p(x_t | x_<t) over the real tokens after the first
        logp = logits.float().log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
        return (logp * mask[:, 1:]).sum(-1)

    with torch.no_grad():
        mixed = sequence_logprob(wrapped(input_ids=ids, attention_mask=mask).logits)
        shards = []
        for names in ens.intervention().voting():
            with active_adapters(ens.model, names):
                shards.append(sequence_logprob(base_of(ens.model)(input_ids=ids, attention_mask=mask).logits))
    expected = torch.logsumexp(torch.stack(shards), 0) - torch.log(torch.tensor(float(len(shards))))
    assert torch.allclose(mixed, expected, atol=1e-4), (mixed, expected)
    prompt = tok(["Question: What is the capital of France?"], return_tensors="pt")
    cached = wrapped.generate(**prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    full = wrapped.generate(**prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, full)


def test_python_entry_trains_and_deletes(tmp_path):
    import obliviate as ob

    tok, base = build_tiny_tokenizer(), make_tiny_llama()
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"question": it.question, "answer": it.answer, "subject": it.subject}) + "\n"
                            for it in ITEMS if isinstance(it, QAItem)))
    full = ob.finetune_sharded(tmp_path / "base", data=data, out=tmp_path / "full", progress=False,
                               overrides={**FAST, "shards": 1, "sequences": 1, "group_by": "subject"})
    gone = ob.delete(full, subjects=["b"], out=tmp_path / "gone", retrain=True, progress=False)
    deletion = gone.config["unlearn"]["deletion"]
    assert gone.method == "s3t" and deletion["items"] == 1 and 0 < deletion["cost_fraction"] <= 1
    model, _ = gone.load_model()
    assert model.intervention.kind == "sharded_ensemble"
