"""The `qa` suite: TOFU-style evaluation of forgetting and utility on question-answer data.

Per set (forget, retain, and any number of utility sets such as TOFU's real authors and world facts):

- **probability**: exp(−mean answer-token NLL); on utility sets normalised over the options,
  P(a) / (P(a) + Σ_j P(perturbed_j)) (TOFU).
- **rouge**: ROUGE-L recall of the greedy answer against the true answer (TOFU).
- **truth ratio**: R = geomean_j P(perturbed_j) / P(paraphrased) (open-unlearning's geometric form,
  scored after the same question prompt; the answer stands in for a missing paraphrase). Forget:
  mean(min(R, 1/R)); other sets: mean(max(0, 1 − R)).

Across sets:

- **forget quality**: KS-test p-value of the forget-set R against the oracle's (exact-retrain
  model), reported with the KS statistic and both n. It depends on n: never compare it across
  forget-set sizes.
- **model utility**: harmonic mean of {retain, utility sets} × {probability, rouge, truth ratio}.
  Without generation (`generate=False`) there is no ROUGE, and the harmonic mean of the other
  components is reported as `model_utility_without_rouge`, never as model utility.
- **memorisation** on the forget set: exact memorisation and extraction strength.
- **membership inference** when a holdout (never-trained) set is given: LOSS, zlib, Min-K% and
  Min-K%++ AUCs with forget = members, holdout = non-members, plus TPR at 1% FPR; with a
  `reference_model` (same tokenizer), the reference attack too (mean log-prob minus the reference
  model's), and with `gradnorm` the white-box GradNorm attack (`evals/gradients.py`, one backward
  pass per item). Given the oracle's AUCs (`oracle_mia_auc`, e.g. `oracle_mia_aucs_from_items` of its
  items.jsonl), TOFU's PrivLeak per attack, as open-unlearning computes it:
  ((1 − AUC) − (1 − AUC_oracle)) / (1 − AUC_oracle + 1e-10) × 100 (near 0 is good, −100 for a model
  that memorised the forget set).
- **fluency** of the forget set's generations: the repetition rate (`metrics/fluency.py`), and with
  a `fluency_classifier` (texts -> P(fluent), e.g. open-unlearning's gibberish classifier) its score.
- **paraphrased and perturbed answers** on the forget set, as open-unlearning reports them beside
  the answer's: the probability of the paraphrased answer and the mean probability of the perturbed
  ones, and the ROUGE-L recall of the greedy answer against each (perturbed: the mean over them).

Every mean carries a 95% bootstrap CI. Model utility's CI resamples items jointly within each set:
one draw of a set's items per replicate serves its probability, ROUGE and truth ratio, so that the
three numbers of one item move together; the sets are drawn independently of one another.
Scoring (models/) is separate from the metrics (metrics/), which are pure functions of the arrays
computed here, so saved per-item values of an oracle can stand in for the oracle model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from obliviate import metrics as M
from obliviate.data.schema import QAItem
from obliviate.evals.open_unlearning import ou_item_scores
from obliviate.evals.qa_aggregates import (  # noqa: F401  (re-exported: the suite's aggregate names)
    EXTRA_DIRECTIONS,
    MODEL_UTILITY,
    MODEL_UTILITY_WITHOUT_ROUGE,
    N_BOOT,
    _model_utility,
    _nanmean,
    _summary,
    _utility_components,
    aggregate,
    oracle_mia_aucs_from_items,
    tofu_privleak,
)
from obliviate.models.generation import generate_answers
from obliviate.models.prompts import PromptFormat
from obliviate.models.scoring import score_qa


@dataclass
class SetScores:
    """Per-item arrays for one set of QA items."""

    name: str
    role: str  # "forget", "retain", "utility" or "holdout"
    subjects: list[str | None]
    probability: np.ndarray
    truth_ratio: np.ndarray  # R, perturbed over paraphrased
    truth_score: np.ndarray  # min(R, 1/R) on forget, max(0, 1 - R) elsewhere
    rouge: np.ndarray | None = None
    generations: list[str] | None = None
    mean_nll: np.ndarray | None = None
    exact_mem: np.ndarray | None = None
    extraction: np.ndarray | None = None
    mia: dict[str, np.ndarray] = field(default_factory=dict)
    ou: dict[str, np.ndarray] = field(default_factory=dict)  # open-unlearning's variants (evals/open_unlearning.py)
    # forget set only: the paraphrased and perturbed answers' probabilities and ROUGE (NaN where absent)
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def item_rows(self) -> list[dict[str, Any]]:
        rows = []
        for i in range(len(self.probability)):
            row: dict[str, Any] = {
                "set": self.name,
                "index": i,
                "subject": self.subjects[i],
                "probability": float(self.probability[i]),
                "truth_ratio": float(self.truth_ratio[i]),
                "truth_score": float(self.truth_score[i]),
            }
            if self.rouge is not None:
                row["rouge"] = float(self.rouge[i])
            row.update({f"ou_{k}": float(v[i]) for k, v in self.ou.items()})
            if self.generations is not None:
                row["generation"] = self.generations[i]
            if self.mean_nll is not None:
                row["mean_nll"] = float(self.mean_nll[i])
            if self.exact_mem is not None:
                row["exact_memorisation"] = float(self.exact_mem[i])
                row["extraction_strength"] = float(self.extraction[i])
            for key, values in self.mia.items():
                row[f"mia_{key}"] = float(values[i])
            for key, values in self.extra.items():
                row[key] = float(values[i])
            rows.append(row)
        return rows


def _truth_ratio(scored: list[dict], role: str = "forget") -> np.ndarray:
    """Per item, perturbed over correct (geometric means of P̄). The correct side is the paraphrased answer
    on the forget and retain sets, and the answer itself on the utility sets (real authors, world facts),
    as TOFU (`base_answer_key: answer`) and open-unlearning do, even when their files have a paraphrase."""
    ratios = []
    for s in scored:
        para = s["answer"] if role == "utility" else (s["paraphrased_answer"] or s["answer"])
        pert = s["perturbed_answers"]
        if not pert:
            ratios.append(np.nan)
            continue
        ratios.append(
            M.truth_ratio_geometric(np.array([para.mean_nll]), np.array([[p.mean_nll for p in pert]]))[0]
        )
    return np.asarray(ratios, dtype=float)


def score_set(
    model,
    tokenizer,
    items: Sequence[QAItem],
    name: str,
    role: str,
    fmt: PromptFormat | None = None,
    batch_size: int = 32,
    generate: bool = True,
    max_new_tokens: int | None = None,
    tracker: EvalProgress | None = None,
    reference_model=None,
    gradnorm: bool = False,
    fluency_classifier=None,
) -> SetScores:
    """Score one set: all the per-item arrays the aggregates are computed from."""
    need_stats = role in ("forget", "holdout")
    tracker = tracker or EvalProgress("", [], False, enabled=False)
    with tracker.phase(name, "scoring", len(items)):
        scored = score_qa(model, tokenizer, items, fmt=fmt, batch_size=batch_size, token_stats=need_stats)
    nll = np.array([s["answer"].mean_nll for s in scored])
    if role == "utility":
        pert_nll = [[p.mean_nll for p in s["perturbed_answers"]] for s in scored]
        prob = np.array([
            M.option_normalised_probability(np.array([n]), np.array([p]))[0] if p else np.exp(-n)
            for n, p in zip(nll, pert_nll, strict=True)
        ])
    else:
        prob = M.answer_probability(nll)
    ratio = _truth_ratio(scored, role)
    truth_score = M.forget_truth_values(ratio) if role == "forget" else M.retain_truth_values(ratio)
    out = SetScores(name, role, [it.subject for it in items], prob, ratio, truth_score, mean_nll=nll)
    if generate and role != "holdout":
        with tracker.phase(name, "generation", len(items)):
            # Scoring the answer showed the model's greedy choices along it: decoding starts after them.
            out.generations = generate_answers(
                model, tokenizer, [it.question for it in items], fmt=fmt, max_new_tokens=max_new_tokens,
                batch_size=batch_size, known=[s["answer"].greedy_prefix() for s in scored],
            )
        out.rouge = M.rouge_l([it.answer for it in items], out.generations)["recall"]
    if role == "forget":
        matches = [s["answer"].argmax_match for s in scored]
        out.exact_mem = M.exact_memorisation(matches)
        out.extraction = M.extraction_strength(matches)
        out.extra = _paraphrase_and_perturbed(items, scored, out.generations)
        if out.generations is not None:
            out.extra["repetition_rate"] = M.repetition_rate(out.generations)
            if fluency_classifier is not None:
                out.extra["fluency"] = M.fluency_scores(out.generations, fluency_classifier)
    if need_stats:
        out.ou = ou_item_scores([s["answer"] for s in scored], role)
        logps = [s["answer"].logprobs for s in scored]
        texts = [it.answer for it in items]
        out.mia = {
            "loss": M.loss_score(logps),
            "zlib": M.zlib_score(logps, texts),
            "min_k": M.min_k_score(logps, k=0.4),
            "min_k_pp": M.min_k_plus_plus_score(
                logps, [s["answer"].mu for s in scored], [s["answer"].var for s in scored], k=0.4
            ),
        }
        if reference_model is not None:
            ref = score_qa(reference_model, tokenizer, items, fmt=fmt, batch_size=batch_size, fields=("answer",))
            out.mia["reference"] = M.reference_score(logps, [s["answer"].logprobs for s in ref])
        if gradnorm:
            from obliviate.evals.gradients import answer_gradient_norms

            out.mia["gradnorm"] = -answer_gradient_norms(model, tokenizer, items, fmt)
    return out


# Direction of the forget set's extra aggregates (None: compare with the oracle).


def _paraphrase_and_perturbed(items: Sequence[QAItem], scored: list[dict], generations: list[str] | None
                              ) -> dict[str, np.ndarray]:
    """Per forget item: paraphrased answer's probability, perturbed answers' mean probability, and the
    ROUGE-L recall of the generation against each (NaN where an item has none)."""
    nan = float("nan")
    para = np.array([nan if s["paraphrased_answer"] is None else np.exp(-s["paraphrased_answer"].mean_nll)
                     for s in scored])
    pert = np.array([np.mean([np.exp(-p.mean_nll) for p in s["perturbed_answers"]]) if s["perturbed_answers"]
                     else nan for s in scored])
    out = {"paraphrase_probability": para, "perturbed_probability": pert}
    if generations is not None:
        rouge = lambda refs, gen: float(np.mean(M.rouge_l(refs, [gen] * len(refs))["recall"]))  # noqa: E731
        out["paraphrase_rouge"] = np.array([rouge([it.paraphrased_answer], g) if it.paraphrased_answer else nan
                                            for it, g in zip(items, generations, strict=True)])
        out["perturbed_rouge"] = np.array([rouge(list(it.perturbed_answers), g) if it.perturbed_answers else nan
                                           for it, g in zip(items, generations, strict=True)])
    return out


@dataclass
class QAResult:
    aggregates: dict[str, dict]
    sets: list[SetScores]

    def items(self) -> list[dict[str, Any]]:
        return [row for s in self.sets for row in s.item_rows()]

    def forget_truth_ratios(self) -> np.ndarray:
        return next(s.truth_ratio for s in self.sets if s.role == "forget")

    def ou_items(self) -> dict[str, dict[str, np.ndarray]]:
        """open-unlearning's per-item scores by role (forget, holdout)."""
        return {s.role: s.ou for s in self.sets if s.ou}


def run_qa_suite(
    model,
    tokenizer,
    forget: Sequence[QAItem],
    retain: Sequence[QAItem],
    utility: Mapping[str, Sequence[QAItem]] | None = None,
    holdout: Sequence[QAItem] | None = None,
    oracle_forget_tr: np.ndarray | None = None,
    fmt: PromptFormat | None = None,
    batch_size: int = 32,
    generate: bool = True,
    max_new_tokens: int | None = None,
    progress: bool = False,
    name: str = "eval",
    reference_model=None,
    oracle_mia_auc: Mapping[str, float] | None = None,
    gradnorm: bool = False,
    fluency_classifier=None,
) -> QAResult:
    """Score every set and aggregate. `oracle_forget_tr`: the oracle's per-item forget truth ratios;
    `reference_model` (same tokenizer): adds the reference MIA; `oracle_mia_auc`: the oracle's AUC per
    attack, for TOFU's PrivLeak (module docstring).

    The prompt format and the generation budget are the tokenizer's (`format_of`) unless given. With
    `progress`, a display per set and phase (scoring, generation), headed by `name` (the model or run).
    """
    plan = [(forget, "forget", "forget"), (retain, "retain", "retain"),
            *((items, set_name, "utility") for set_name, items in (utility or {}).items())]
    if holdout:
        plan.append((holdout, "holdout", "holdout"))
    sizes = [(set_name, role, len(items)) for items, set_name, role in plan]
    # The membership attacks that need more than the model run on forget and holdout, with a holdout.
    mia = dict(reference_model=reference_model, gradnorm=gradnorm) if holdout else {}
    with EvalProgress(name, sizes, generate, enabled=progress) as tracker:
        kwargs = dict(fmt=fmt, batch_size=batch_size, generate=generate, max_new_tokens=max_new_tokens,
                      tracker=tracker)
        sets = [score_set(model, tokenizer, items, set_name, role, **kwargs,
                          **(mia if role in ("forget", "holdout") else {}),
                          **({"fluency_classifier": fluency_classifier} if role == "forget" else {}))
                for items, set_name, role in plan]
    return QAResult(aggregate(sets, oracle_forget_tr, oracle_mia_auc), sets)


class EvalProgress:
    """One bar over an evaluation: items scored and generated, set by set, described as `NAME · SET · PHASE`."""

    def __init__(self, name: str, sizes: Sequence[tuple[str, str, int]], generate: bool, enabled: bool = True) -> None:
        total = sum(n for _, _, n in sizes) + (sum(n for _, role, n in sizes if role != "holdout") if generate else 0)
        self.name, self.enabled = name, enabled and total > 0
        self.bar: Any = None
        self.total = total

    def __enter__(self) -> EvalProgress:
        if self.enabled:
            from rich.markup import escape
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

            from obliviate.progress import make_progress

            self._escape = escape
            self.bar = make_progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("items"), TimeElapsedColumn(), transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task(escape(self.name), total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    @contextlib.contextmanager
    def phase(self, set_name: str, phase: str, n_items: int) -> Iterator[None]:
        """Show `NAME · SET · PHASE (N items)` while the block runs, then count its items as done."""
        if self.bar is not None:
            self.bar.update(self.task, description=self._escape(f"{self.name} · {set_name} · {phase} ({n_items})"))
        yield
        if self.bar is not None:
            self.bar.advance(self.task, n_items)


def oracle_truth_ratios_from_items(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The oracle's forget-set truth ratios from a saved items.jsonl."""
    return np.array([r["truth_ratio"] for r in rows if r["set"] == "forget"], dtype=float)
