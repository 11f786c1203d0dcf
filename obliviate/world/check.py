"""Calibration of the built-in world: do the target and the oracles behave as the evaluation assumes?

`check_world(preset, seed, split, arch=...)` builds (or reuses) the target, the oracle and a second
oracle (another training seed) of one architecture and measures:

  target EM, trained forms     greedy exact match on the forget and on the retain people >= 0.90
  target EM, held-out forms    on all people's never-trained question forms, well above the prior:
                               EM >= max(2 * prior, prior + 0.15)
  oracle EM, forget            the oracle cannot know the forget people: EM <= prior + 0.10
  utility EM                   world facts are trained into every model: EM >= 0.90 for each model
  FQ(target, oracle)           KS p-value of forget-set truth ratios <= 1e-3 (the target is caught)
  FQ(oracle2, oracle)          >= 0.05 (two exact retrainings are indistinguishable)
  MIA AUC target               LOSS attack, forget people (members) vs holdout people: >= 0.80
  MIA AUC oracle               |AUC - 0.5| <= 0.10 (neither set was trained); the rule column also
                               gives the AUC's null standard deviation for these sample sizes

Exact match compares normalised strings (lower case, punctuation dropped, spaces collapsed) of the
greedy answer, cut at EOS or a newline, and the reference answer. The attribute prior of a set is
the mean over its items of the frequency of the most common value of the item's attribute among
the trained people: the accuracy of always guessing the commonest value.

The truth ratio is the geometric form R = geomean_j P(perturbed_j) / P(paraphrased), every answer
scored after the item's trained question; forget quality is `ks_2samp` on per-item R.
The MIA score is the mean log-probability of the answer tokens (higher = member).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rich.table import Table
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from obliviate.data.checks import normalise
from obliviate.data.schema import QAItem
from obliviate.metrics.forget_quality import forget_quality
from obliviate.metrics.mia import loss_score, mia_auc
from obliviate.metrics.truth_ratio import truth_ratio_geometric
from obliviate.models.generation import generate_answers
from obliviate.models.scoring import score_qa
from obliviate.world.build import build_world_models, quiet_hf_progress
from obliviate.world.generator import World
from obliviate.world.train import cpu_threads, default_threads


@dataclass
class CheckRow:
    name: str
    value: float
    threshold: str  # the rule, e.g. ">= 0.90" or "0.50 +- 0.10"
    passed: bool


def exact_match(generated: Sequence[str], answers: Sequence[str]) -> float:
    """Fraction of generations equal to their answer after normalising both."""
    return float(np.mean([normalise(g) == normalise(a) for g, a in zip(generated, answers, strict=True)]))


# -- the checks -------------------------------------------------------------------------------


def attribute_prior(world: World, items: Sequence[QAItem]) -> float:
    """Mean over items of the commonest value's frequency for the item's attribute (trained people)."""
    trained = [world.person(pid) for pid in world.splits["trained"]]
    freq = {}
    for spec in world.attributes:
        counts = Counter(p.attributes[spec.key] for p in trained)
        freq[spec.key] = counts.most_common(1)[0][1] / len(trained)
    return float(np.mean([freq[item.meta["attribute"]] for item in items]))


def _truth_ratios(model, tokenizer, items: Sequence[QAItem]) -> np.ndarray:
    scores = score_qa(model, tokenizer, items, fields=("paraphrased_answer", "perturbed_answers"), batch_size=64)
    para = np.array([s["paraphrased_answer"].mean_nll for s in scores])  # (n,)
    pert = np.array([[p.mean_nll for p in s["perturbed_answers"]] for s in scores])  # (n, k)
    return truth_ratio_geometric(para, pert)


def _loss_scores(model, tokenizer, items: Sequence[QAItem]) -> np.ndarray:
    scores = score_qa(model, tokenizer, items, fields=("answer",), batch_size=64)
    return loss_score([s["answer"].logprobs for s in scores])


def _answers(model, tokenizer, questions: Sequence[str]) -> list[str]:
    return generate_answers(model, tokenizer, questions, max_new_tokens=16, batch_size=64)


def _em(model, tokenizer, items: Sequence[QAItem]) -> float:
    return exact_match(_answers(model, tokenizer, [it.question for it in items]), [it.answer for it in items])


def _heldout_em(model, tokenizer, items: Sequence[QAItem]) -> float:
    pairs = [(q, it.answer) for it in items for q in it.paraphrased_questions]
    return exact_match(_answers(model, tokenizer, [q for q, _ in pairs]), [a for _, a in pairs])


def _row(name: str, value: float, threshold: str, passed: bool) -> CheckRow:
    return CheckRow(name, float(value), threshold, bool(passed))


def auc_null_sd(n1: int, n2: int) -> float:
    """Standard deviation of the AUC of two exchangeable samples (Mann-Whitney null)."""
    return float(np.sqrt((n1 + n2 + 1) / (12 * n1 * n2)))


def _em_rows(world: World, split: str, target, oracle, oracle2, tokenizer) -> list[CheckRow]:
    forget, retain = world.forget_set(split), world.retain_set(split)
    utility = [it for items in world.utility_sets().values() for it in items]
    prior_forget, prior_all = attribute_prior(world, forget), attribute_prior(world, forget + retain)
    rows = [_row("attribute prior (forget)", prior_forget, "reported", True)]
    for name, items in (("forget", forget), ("retain", retain)):
        em = _em(target, tokenizer, items)
        rows.append(_row(f"target EM {name}, trained forms", em, ">= 0.90", em >= 0.9))
    need = max(2 * prior_all, prior_all + 0.15)
    em = _heldout_em(target, tokenizer, forget + retain)
    rows.append(_row("target EM held-out forms", em, f">= {need:.2f} (prior {prior_all:.2f})", em >= need))
    em = _em(oracle, tokenizer, forget)
    rows.append(_row("oracle EM forget", em, f"<= {prior_forget + 0.1:.2f} (prior + 0.10)", em <= prior_forget + 0.1))
    for name, model in (("target", target), ("oracle", oracle), ("oracle2", oracle2)):
        em = _em(model, tokenizer, utility)
        rows.append(_row(f"{name} EM utility sets", em, ">= 0.90", em >= 0.9))
    return rows


def _fq_rows(world: World, split: str, target, oracle, oracle2, tokenizer) -> list[CheckRow]:
    forget = world.forget_set(split)
    tr_target, tr_oracle, tr_oracle2 = (_truth_ratios(m, tokenizer, forget) for m in (target, oracle, oracle2))
    fq_target = forget_quality(tr_target, tr_oracle)["forget_quality"]
    fq_oracle2 = forget_quality(tr_oracle2, tr_oracle)["forget_quality"]
    return [_row(f"FQ(target, oracle), n={len(forget)}", fq_target, "<= 1e-3", fq_target <= 1e-3),
            _row(f"FQ(oracle2, oracle), n={len(forget)}", fq_oracle2, ">= 0.05", fq_oracle2 >= 0.05)]


def _mia_rows(world: World, split: str, target, oracle, tokenizer) -> list[CheckRow]:
    forget, holdout = world.forget_set(split), world.holdout_set()
    label = f"(forget {len(forget)} vs holdout {len(holdout)})"
    auc_t, auc_o = (mia_auc(_loss_scores(m, tokenizer, forget), _loss_scores(m, tokenizer, holdout))["auc"]
                    for m in (target, oracle))
    sd = auc_null_sd(len(forget), len(holdout))
    return [_row(f"MIA AUC target {label}", auc_t, ">= 0.80", auc_t >= 0.8),
            _row(f"MIA AUC oracle {label}", auc_o, f"0.50 +- 0.10 (null sd {sd:.3f})", abs(auc_o - 0.5) <= 0.1)]


def evaluate_models(world: World, split: str, target, oracle, oracle2, tokenizer) -> list[CheckRow]:
    """The calibration table for loaded models (see the module docstring for the rules)."""
    return [*_em_rows(world, split, target, oracle, oracle2, tokenizer),
            *_fq_rows(world, split, target, oracle, oracle2, tokenizer),
            *_mia_rows(world, split, target, oracle, tokenizer)]


def check_world(preset: str = "tiny", seed: int = 0, split: str = "forget10", progress: bool = False,
                arch: str = "llama") -> list[CheckRow]:
    """Build (or reuse) target, oracle and oracle2 of a world and return its calibration table."""
    models = build_world_models(preset, seed, split, which=("target", "oracle", "oracle2"), progress=progress,
                                arch=arch)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(models.tokenizer, trust_remote_code=False)
    with cpu_threads(default_threads(models.world.recipe)), quiet_hf_progress():
        paths = (models.target, models.oracle, models.oracle2)
        loaded = [AutoModelForCausalLM.from_pretrained(p, trust_remote_code=False).eval() for p in paths]
        return evaluate_models(models.world, split, *loaded, tokenizer)


def format_check_table(rows: Sequence[CheckRow], title: str = "world calibration") -> Table:
    table = Table(title=title)
    for column in ("check", "value", "rule", "pass"):
        table.add_column(column)
    for row in rows:
        value = f"{row.value:.2e}" if 0 < abs(row.value) < 1e-2 else f"{row.value:.3f}"
        table.add_row(row.name, value, row.threshold, "[green]yes[/green]" if row.passed else "[red]NO[/red]")
    return table
