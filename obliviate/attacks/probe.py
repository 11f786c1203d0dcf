"""probe: a linear read-out of the forgotten answers from each layer's hidden states.

Behavioural attacks see what a model says; a probe sees what its representations still encode
(after "Are We Truly Forgetting?" and ConceptVectors' view of knowledge as directions in
activation space). For every question form of every fact, the hidden state at the last prompt
token ("Answer:") of each layer is the feature vector; the label is the first token of the
answer, the token the model has to produce next. A multinomial logistic regression (scikit-learn,
standardised features, C = `C`) is

- trained on the retain facts, which every model knows, so a probe can be learned on any of them;
- cross-validated there (`folds` folds grouped by subject, so no person is on both sides) to pick
  the layer, without looking at the forget facts;
- tested on the forget facts: per test row, `knows` = the probe names the answer's first token.

Why the first token and not the value: the world deals each value to about one person, so a
classifier over values trained on other people could never name a forget person's value; the
values' first tokens (word pieces) recur across people. Attributes whose first token is the same
for half or more of the values (every book title starts with "The") say nothing and are left out,
as are test rows whose token never occurs in training (identical for all models: the rule reads
only the data). The prior is the accuracy of always naming the commonest training token of the
row's attribute: what a probe reaches from the question type alone.

Questions are rendered in the model's prompt format (under a chat template, the last prompt token
is the end of its generation prompt). Items without a subject are their own group in the folds.
Without an oracle each test row's chance is that prior (base.py).

The embedding layer is skipped: at the last prompt token it sees the same token for every question.
A model that exposes no hidden states cannot be probed; that is a one-line error naming what to do.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import torch
from pydantic import Field

from obliviate.attacks.base import Attack, AttackConfig, AttackSets, register
from obliviate.attacks.facts import encode_texts, fact_key, is_chat, question_prompt
from obliviate.data.schema import QAItem
from obliviate.errors import ObliviateError
from obliviate.models.generation import hidden_states
from obliviate.models.scoring import model_device


class ProbeConfig(AttackConfig):
    C: float = Field(1.0, description="inverse L2 regularisation of the logistic regression", gt=0)
    folds: int = Field(3, description="cross-validation folds on the retain facts (grouped by subject)", ge=2)
    max_iter: int = Field(200, description="solver iterations per fit", ge=10)
    tol: float = Field(1e-2, description="solver tolerance (looser is faster; accuracy moves by a row or two)", gt=0)


def _rows(items: list[QAItem]) -> list[tuple[QAItem, int, str]]:
    """(item, form index, question) for every question form of every item."""
    return [(it, i, q) for it in items for i, q in enumerate([it.question, *it.paraphrased_questions])]


def _first_token(tokenizer, answer: str) -> int:
    """The answer's first token as the model produces it after the prompt (a chat answer starts without a space)."""
    text = answer if is_chat(tokenizer) else f" {answer}"
    return int(tokenizer(text, add_special_tokens=False)["input_ids"][0])


def _kind(item: QAItem) -> str:
    return item.meta.get("attribute", "")


def check_hidden_states(model, tokenizer) -> None:
    """A one-line ObliviateError when `model` returns no hidden states."""
    ids = torch.tensor([encode_texts(tokenizer, [question_prompt("?", tokenizer)])[0]], device=model_device(model))
    with torch.inference_mode():
        try:
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
        except TypeError:
            out = None
    if getattr(out, "hidden_states", None) is None:
        raise ObliviateError(
            f"probe: {type(model).__name__} returns no hidden states (output_hidden_states=True gives none), "
            "so there is nothing to probe; probe the model it wraps (pass its directory or run as RUN), "
            "or judge this one with the behavioural attacks (forms, jailbreak, in_context, stepwise)")


def probe_data(tokenizer, sets: AttackSets):
    """(train rows, labels, groups, test rows, labels, prior per test row, attributes kept)."""
    train, test = _rows(sets.retain), _rows(sets.forget)
    y_train = np.array([_first_token(tokenizer, it.answer) for it, _, _ in train])
    kinds = {}
    for kind in dict.fromkeys(_kind(it) for it, _, _ in train):
        labels = y_train[[i for i, (it, _, _) in enumerate(train) if _kind(it) == kind]]
        (top, count), = Counter(labels.tolist()).most_common(1)
        if count / len(labels) < 0.5:
            kinds[kind] = (top, set(labels.tolist()))
    keep_train = [i for i, (it, _, _) in enumerate(train) if _kind(it) in kinds]
    test = [r for r in test if _kind(r[0]) in kinds]
    y_test = np.array([_first_token(tokenizer, it.answer) for it, _, _ in test], dtype=np.int64)
    seen = [i for i, (it, _, _) in enumerate(test) if y_test[i] in kinds[_kind(it)][1]]
    test, y_test = [test[i] for i in seen], y_test[seen]
    prior = np.array([float(y == kinds[_kind(it)][0]) for (it, _, _), y in zip(test, y_test, strict=True)])
    train = [train[i] for i in keep_train]
    groups = np.array([it.subject or it.question for it, _, _ in train])
    return train, y_train[keep_train], groups, test, y_test, prior, sorted(kinds)


def _fit(x: np.ndarray, y: np.ndarray, cfg: ProbeConfig):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, tol=cfg.tol))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings: the iteration cap is deliberate
        return clf.fit(x, y)


def cv_accuracy(x: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: ProbeConfig) -> float:
    """Mean held-out accuracy over `folds` folds that never split a subject."""
    from sklearn.model_selection import GroupKFold

    folds = GroupKFold(n_splits=min(cfg.folds, len(set(groups))))
    return float(np.mean([np.mean(_fit(x[a], y[a], cfg).predict(x[b]) == y[b]) for a, b in folds.split(x, y, groups)]))


@register
class Probe(Attack):
    name = "probe"
    summary = "logistic-regression probes on each layer's hidden states predict the forgotten answers"
    paper = "Are We Truly Forgetting? (2025); ConceptVectors (Hong et al. 2024)"
    Config = ProbeConfig

    def lacks(self, sets: AttackSets) -> dict[str, str]:
        if not sets.retain:
            return {"probe": "probe: no retain facts to train the probe on (pass --retain)"}
        return {}

    def run(self, model, tokenizer, sets: AttackSets, progress: bool = False) -> dict:
        if self.lacks(sets):
            raise ObliviateError(self.lacks(sets)["probe"])
        check_hidden_states(model, tokenizer)
        cfg = self.config
        train, y_train, groups, test, y_test, prior, kinds = probe_data(tokenizer, sets)
        if len(test) == 0 or len(set(groups)) < 2:
            raise ObliviateError("probe: too few facts to probe (need retain facts of two or more subjects and "
                                 "forget facts whose answers start with a token seen in the retain facts)")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        feats = [hidden_states(model, encode_texts(tokenizer, [question_prompt(q, tokenizer) for _, _, q in rows]),
                               batch_size=cfg.batch_size, pad_id=pad) for rows in (train, test)]
        layers = []
        for layer in range(1, len(feats[0])):
            cv = cv_accuracy(feats[0][layer], y_train, groups, cfg)
            layers.append({"layer": layer, "cv_accuracy": cv})
        best = max(layers, key=lambda r: r["cv_accuracy"])
        for entry in layers:
            clf = _fit(feats[0][entry["layer"]], y_train, cfg)
            entry["test_accuracy"] = float(np.mean(clf.predict(feats[1][entry["layer"]]) == y_test))
            if entry is best:
                correct = clf.predict(feats[1][entry["layer"]]) == y_test
        rows = [{"key": fact_key(it), "variant": "probe", "item": f"{fact_key(it)}#{form}", "knows": float(ok),
                 "chance": float(guess)} for (it, form, _), ok, guess in zip(test, correct, prior, strict=True)]
        return {"rows": rows, "extra": {"layer": best["layer"], "layers": layers, "prior": float(prior.mean()),
                                        "n_train": len(train), "n_test": len(test), "attributes": kinds,
                                        "classes": len(set(y_train.tolist()))}}

    def compare(self, outputs) -> dict:
        report = super().compare(outputs)
        extra = report.get("extra", {})
        report["prior"] = next((e["prior"] for e in extra.values()), None)
        report["layers"] = {role: e["layer"] for role, e in extra.items()}
        return report
