"""The prompt classifier at work: a `Detector` (classifier + the prompt reader) on token rows, and its set-up.

`fit_detector` fits the classifier on forget against retain items (a question and its paraphrases
form one group, held out whole), calibrates its threshold and measures its held-out error rates;
`report_table` shows that report. ECO, GUARD and the gated prefix methods all use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from obliviate.data.schema import LabelledText
from obliviate.errors import ConfigError
from obliviate.interventions.classifier import MINILM, PromptClassifier  # noqa: F401
from obliviate.interventions.regions import PromptReader, Region, classifier_text
from obliviate.models.prompts import PromptFormat, format_of

# ---------------------------------------------------------------------------------------------
# The detector: set-up shared by ECO, GUARD and the gated prefix methods
# ---------------------------------------------------------------------------------------------


@dataclass
class Detector:
    """A fitted prompt classifier and the reader that finds a prompt's question in token rows."""

    classifier: PromptClassifier
    reader: PromptReader

    def flags(self, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor
              ) -> tuple[np.ndarray, list[Region], list[str]]:
        """(flags (B,), regions, question texts) of the rows of `input_ids` (B, T)."""
        if tokenizer is None:
            raise ConfigError("a prompt classifier needs the tokenizer: wrap(model, tokenizer)")
        questions, regions = self.reader.read(tokenizer, input_ids, attention_mask)
        return self.classifier.flags(questions), regions, questions

    def flags_items(self, tokenizer, items: Sequence, fmt: PromptFormat | None = None) -> np.ndarray:
        """Whether the gate would flag each item (QA item or labelled text) by its original prompt."""
        fmt = fmt or format_of(tokenizer)
        texts = [classifier_text(tokenizer, item_prompts(it)[0][0], fmt) for it in items]
        return self.classifier.flags(texts) if texts else np.zeros(0, dtype=bool)

    def state(self) -> dict[str, Any]:
        """JSON state: {"classifier", "marker", "format"} (the keys ECO and GUARD runs have always saved)."""
        return {"classifier": self.classifier.to_dict(), **self.reader.state()}

    @classmethod
    def from_state(cls, config: dict[str, Any]) -> Detector:
        return cls(PromptClassifier.from_dict(config["classifier"]), PromptReader.from_state(config))


def item_prompts(item) -> tuple[list[str], list[str]]:
    """(original, paraphrased) prompt texts of a QA item or a labelled text (which has no paraphrases)."""
    if isinstance(item, LabelledText):
        return [item.text], []
    return [item.question], list(item.paraphrased_questions)


def question_groups(items: Sequence) -> list[list[int]]:
    """Indices of `items` grouped so that items sharing any prompt text (original or paraphrased) are together.

    The world's facts are asked in several trained forms, each its own item with the same paraphrases:
    one group per fact, so no held-out prompt is a form of a trained one. Groups keep first-seen order.
    """
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, item in enumerate(items):
        original, paraphrased = item_prompts(item)
        for text in (*original, *paraphrased):
            j = owner.setdefault(text, i)
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(items)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _split_groups(groups: list[list[int]], fraction: float, rng: np.random.Generator
                  ) -> tuple[list[list[int]], list[list[int]]]:
    """(kept, held out): ⌊fraction · n⌋ groups held out, at least one kept."""
    n_out = min(int(fraction * len(groups)), len(groups) - 1)
    order = rng.permutation(len(groups))
    held = sorted(order[:n_out].tolist())
    keep = sorted(order[n_out:].tolist())
    return [groups[i] for i in keep], [groups[i] for i in held]


def _rates(flags: np.ndarray, positive: bool) -> dict[str, Any]:
    """Counts and rate of errors: missed forget prompts (positive) or flagged retain prompts."""
    n = int(len(flags))
    errors = int((~flags).sum()) if positive else int(flags.sum())
    key = ("forget_prompts", "false_negatives", "fnr") if positive else ("retain_prompts", "false_positives", "fpr")
    return {key[0]: n, key[1]: errors, key[2]: errors / n if n else None}


def fit_detector(
    tokenizer,
    forget: Sequence,
    retain: Sequence,
    embedder: str = MINILM,
    alpha: float = 0.05,
    calibration_fraction: float = 0.3,
    threshold: float | None = None,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    fmt: PromptFormat | None = None,
    method: str = "prompt classifier",
    prefilter: str | None = None,
    prefilter_retain_share: float = 0.0,
) -> tuple[Detector, dict[str, Any]]:
    """(detector, report) for forget vs retain items (QA items or labelled texts).

    Every prompt the classifier trains on or is measured on is the text it reads at run time
    (`classifier_text`: rendered in `fmt`, encoded, decoded, template stripped). The report holds the
    threshold, the flag rates on the training items' questions, and the held-out error rates (module
    docstring) with the indices of the held-out items; its "held_out" is None when `holdout_fraction`
    leaves no group out. With a prefilter stage, the report gives its threshold, and each held-out row
    the share of retain prompts it passes on to the main embedder ("screened_in").
    """
    if not forget or not retain:
        raise ConfigError(f"{method}: the prompt classifier needs forget and retain items")
    fmt = fmt or format_of(tokenizer)
    seen: dict[str, str] = {}

    def text(q: str) -> str:
        if q not in seen:
            seen[q] = classifier_text(tokenizer, q, fmt)
        return seen[q]

    def prompts(items: Sequence, group: list[int], kind: int) -> list[str]:
        return [text(q) for i in group for q in item_prompts(items[i])[kind]]

    rng = np.random.default_rng([seed, 1])
    forget_train, forget_out = _split_groups(question_groups(forget), holdout_fraction, rng)
    retain_train, retain_out = _split_groups(question_groups(retain), holdout_fraction, rng)
    # As in training the world's models: each item contributes its question and its paraphrases.
    forget_texts = [[t for i in g for t in (*prompts(forget, [i], 0), *prompts(forget, [i], 1))] for g in forget_train]
    retain_texts = [t for g in retain_train for i in g for t in (*prompts(retain, [i], 0), *prompts(retain, [i], 1))]
    classifier = PromptClassifier.fit(forget_texts, retain_texts, embedder, alpha, calibration_fraction, threshold,
                                      seed=seed, prefilter=prefilter, prefilter_retain_share=prefilter_retain_share)
    reader = PromptReader.for_items(tokenizer, fmt, [q for it in [*forget, *retain] for q in item_prompts(it)[0]])
    train_flags = lambda items, groups: classifier.flags(  # noqa: E731
        [t for g in groups for t in prompts(items, g, 0)])
    f_train, r_train = train_flags(forget, forget_train), train_flags(retain, retain_train)
    stage1 = classifier.prefilter
    report: dict[str, Any] = {
        "embedder": embedder,
        "threshold": None if math.isinf(classifier.threshold) else classifier.threshold,
        "alpha": classifier.alpha,
        "n_calibration": classifier.n_calibration,
        "prefilter": None if stage1 is None else {
            "embedder": stage1.embedder, "alpha": stage1.alpha,
            "threshold": None if math.isinf(stage1.threshold) else stage1.threshold},
        "forget_flag_rate": float(np.mean(f_train)) if len(f_train) else None,
        "retain_flag_rate": float(np.mean(r_train)) if len(r_train) else None,
        "held_out": None,
    }
    if forget_out or retain_out:
        held: dict[str, Any] = {"fraction": holdout_fraction, "forget_groups": len(forget_out),
                                "retain_groups": len(retain_out),
                                "forget_items": sorted(i for g in forget_out for i in g),
                                "retain_items": sorted(i for g in retain_out for i in g)}
        for kind, name in ((0, "original"), (1, "paraphrased")):
            f = list(dict.fromkeys(t for g in forget_out for t in prompts(forget, g, kind)))
            r = list(dict.fromkeys(t for g in retain_out for t in prompts(retain, g, kind)))
            held[name] = {**_rates(classifier.flags(f), True), **_rates(classifier.flags(r), False)}
            if stage1 is not None:
                held[name]["screened_in"] = float(np.mean(classifier.screens(r))) if r else None
        report["held_out"] = held
    return Detector(classifier, reader), report


def report_table(report: dict[str, Any]):
    """The held-out error rates of a `fit_detector` report as a rich table (None without a held-out share)."""
    from rich.table import Table

    held = report.get("held_out")
    if not held:
        return None
    tau = report.get("threshold")
    stage1 = report.get("prefilter")
    name = f"{report.get('embedder')}, τ = {'−∞' if tau is None else f'{tau:.3g}'}"
    if stage1:
        t1 = stage1["threshold"]
        name = f"{stage1['embedder']} prefilter τ = {'−∞' if t1 is None else f'{t1:.3g}'}, then {name}"
    columns = ["held-out prompts", "forget", "missed", "FNR", "retain", "flagged", "FPR"]
    if stage1:
        columns.append(f"retain to {report.get('embedder')}")
    table = Table(*columns, title=f"prompt classifier ({name}): {held['forget_groups']} forget and "
                                  f"{held['retain_groups']} retain question groups held out")
    rate = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
    for kind in ("original", "paraphrased"):
        r = held[kind]
        cells = [kind, str(r["forget_prompts"]), str(r["false_negatives"]), rate(r["fnr"]),
                 str(r["retain_prompts"]), str(r["false_positives"]), rate(r["fpr"])]
        table.add_row(*cells, *([rate(r.get("screened_in"))] if stage1 else []))
    return table
