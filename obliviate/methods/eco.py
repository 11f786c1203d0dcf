"""Embedding-COrrupted prompts (ECO).

Liu et al. 2024, *Large Language Model Unlearning via Embedding-Corrupted Prompts* (code
`chrisliu298/llm-unlearn-eco`). The model is untouched; at inference:

1. a prompt classifier flags prompts about the forget set (`interventions/classifier.py`:
   sentence embeddings + logistic regression; threshold τ by split-conformal calibration on
   held-out forget prompts, so the false-negative rate is at most α);
2. for flagged prompts, a forward hook corrupts the input embeddings of the subject's tokens (all
   prompt tokens but the last when no subject appears), during the prefill only
   (`interventions/corruption.py`): `rand_noise_first_n` (default, k = 1), `rand_noise_top_k`,
   `zero_out_top_k`, `flip_sign_top_k`;
3. the noise strength σ is tuned by zeroth-order descent on F(σ) = (f(σ) − f*)², where f is the
   mean forget-answer probability exp(−mean NLL) under the corruption and f* a target:

       g = [F(σ + ε) − F(max(σ − ε, 1e-8))] / 2ε,     σ ← clip(σ − η·g, σ_min, σ_max)

   f* is `target_probability` when given (e.g. the exact-retrain oracle's value), else chance:
   the mean probability of the forget items' perturbed (wrong) answers under the unmodified
   model, i.e. the true answer made no likelier than a wrong one.

σ is in units of the mean L2 norm of the embedding rows. The paper's thresholds are per task and
very high (0.99–0.9999) with a fine-tuned classifier; conformal calibration replaces the manual
choice here.
"""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from obliviate.errors import ConfigError
from obliviate.interventions.classifier import HASHING, MINILM, PromptClassifier
from obliviate.interventions.corruption import NOISY, EmbeddingCorruption
from obliviate.interventions.regions import classifier_text, phrase_token_ids, prompt_marker
from obliviate.methods.base import MethodConfig
from obliviate.methods.inference import InterventionMethod, item_kind
from obliviate.models.prompts import DEFAULT_FORMAT, PromptFormat


class DetectorConfig(MethodConfig):
    """The prompt classifier shared by ECO and GUARD."""

    embedder: Literal["minilm", "hashing"] = Field(
        MINILM, description="prompt embeddings: 'minilm' (all-MiniLM-L6-v2, needs the 'embed' extra) or "
        "'hashing' (character n-grams, no model)")
    alpha: float = Field(0.05, gt=0, lt=1, description="bound on the false-negative rate (conformal calibration)")
    calibration_fraction: float = Field(0.3, gt=0, lt=1, description="share of forget items held out to calibrate τ")
    threshold: float | None = Field(None, description="a fixed threshold τ on the forget probability instead")


def fit_detector(tokenizer, forget, retain, cfg: DetectorConfig, fmt: PromptFormat = DEFAULT_FORMAT
                 ) -> tuple[PromptClassifier, list[int]]:
    """(classifier, prompt marker) for QA forget/retain items and their paraphrased questions."""
    questions = lambda it: [it.question, *it.paraphrased_questions]  # noqa: E731
    forget_groups = [[classifier_text(tokenizer, q, fmt) for q in questions(it)] for it in forget]
    retain_texts = [classifier_text(tokenizer, q, fmt) for it in retain for q in questions(it)]
    classifier = PromptClassifier.fit(forget_groups, retain_texts, cfg.embedder, cfg.alpha, cfg.calibration_fraction,
                                      cfg.threshold, seed=cfg.seed)
    marker = prompt_marker(tokenizer, fmt, [it.question for it in [*forget, *retain]])
    return classifier, marker


def detector_summary(classifier: PromptClassifier, tokenizer, forget, retain) -> dict:
    """How the classifier does on the training questions (flag rates)."""
    f = classifier.flags([classifier_text(tokenizer, it.question, DEFAULT_FORMAT) for it in forget])
    r = classifier.flags([classifier_text(tokenizer, it.question, DEFAULT_FORMAT) for it in retain])
    return {"threshold": classifier.threshold, "n_calibration": classifier.n_calibration,
            "forget_flag_rate": float(np.mean(f)) if len(f) else None,
            "retain_flag_rate": float(np.mean(r)) if len(r) else None}


def forget_probability(wrapped, tokenizer, forget) -> float:
    """Mean over items of exp(−mean NLL) of the true answer."""
    from obliviate.models.scoring import score_qa

    scored = score_qa(wrapped, tokenizer, forget, fields=("answer",))
    return float(np.mean([np.exp(-s["answer"].mean_nll) for s in scored]))


def chance_probability(model, tokenizer, forget) -> float | None:
    """Mean over items of the perturbed answers' probability exp(−mean_j NLL_j); None without any."""
    from obliviate.models.scoring import score_qa

    items = [it for it in forget if it.perturbed_answers]
    if not items:
        return None
    scored = score_qa(model, tokenizer, items, fields=("perturbed_answers",))
    return float(np.mean([np.exp(-np.mean([p.mean_nll for p in s["perturbed_answers"]])) for s in scored]))


class ECOConfig(DetectorConfig):
    corruption: Literal["rand_noise_first_n", "rand_noise_top_k", "zero_out_top_k", "flip_sign_top_k"] = Field(
        "rand_noise_first_n", description="how flagged prompt embeddings are corrupted")
    dims: int = Field(1, ge=1, description="k: embedding dimensions corrupted per token")
    target: Literal["subject", "prompt"] = Field(
        "subject", description="corrupt the subject's tokens ('subject', all prompt tokens but the last when "
        "none appears) or always all prompt tokens but the last ('prompt')")
    strength: float = Field(1.0, ge=0, description="initial σ (units: mean embedding-row norm)")
    zo_steps: int = Field(10, ge=0, description="zeroth-order updates of σ (noise corruptions only; 0: keep σ)")
    zo_epsilon: float = Field(0.1, gt=0, description="ε of the two-point gradient estimate")
    zo_lr: float = Field(10.0, gt=0, description="η, the step size on σ")
    sigma_min: float = Field(0.0, ge=0, description="lower bound on σ")
    sigma_max: float = Field(100.0, gt=0, description="upper bound on σ")
    target_probability: float | None = Field(
        None, ge=0, le=1, description="f*, the forget-answer probability to reach (default: chance, the "
        "perturbed answers' probability)")


class ECO(InterventionMethod):
    name = "eco"
    paper = "Liu et al. 2024, Large Language Model Unlearning via Embedding-Corrupted Prompts"
    summary = "flag forget prompts with a classifier; corrupt their embeddings, σ tuned by zeroth-order descent"
    Config = ECOConfig
    uses_retain = True

    def build(self, model, tokenizer, forget, retain, out_dir, progress, resume):
        cfg = self.config
        item_kind(forget, self.name)
        item_kind(retain, self.name)
        if not forget or not retain:
            raise ConfigError("eco: the prompt classifier needs forget and retain items")
        classifier, marker = fit_detector(tokenizer, forget, retain, cfg)
        subjects = list(dict.fromkeys(it.subject for it in forget if it.subject)) if cfg.target == "subject" else []
        emb = model.get_input_embeddings().weight
        scale = float(emb.detach().float().norm(dim=-1).mean())
        eco = EmbeddingCorruption(classifier, cfg.corruption, cfg.strength, cfg.dims, scale, marker, DEFAULT_FORMAT,
                                  phrase_token_ids(tokenizer, subjects), cfg.seed,
                                  skip_ids=tokenizer.all_special_ids)
        summary = {"classifier": detector_summary(classifier, tokenizer, forget, retain), "sigma": cfg.strength}
        if cfg.zo_steps and cfg.corruption in NOISY:
            eco, tuning = self._tune(eco, model, tokenizer, forget, out_dir)
            summary.update(tuning)
        return eco, summary

    def _tune(self, eco: EmbeddingCorruption, model, tokenizer, forget, out_dir):
        """Zeroth-order descent of σ towards the target forget probability (logged per step)."""
        cfg = self.config
        target = cfg.target_probability
        if target is None:
            target = chance_probability(model, tokenizer, forget)
            if target is None:
                raise ConfigError("eco: no perturbed answers to define chance; set target_probability")
        objective = lambda s: (forget_probability(eco.with_strength(s).wrap(model, tokenizer), tokenizer, forget)  # noqa: E731
                               - target) ** 2
        sigma, rows = cfg.strength, []
        for step in range(1, cfg.zo_steps + 1):
            hi, lo = objective(sigma + cfg.zo_epsilon), objective(max(sigma - cfg.zo_epsilon, 1e-8))
            grad = (hi - lo) / (2 * cfg.zo_epsilon)
            sigma = float(min(max(sigma - cfg.zo_lr * grad, cfg.sigma_min), cfg.sigma_max))
            rows.append({"step": step, "sigma": sigma, "objective": (hi + lo) / 2, "grad": grad})
        with open(out_dir / "train_log.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in rows)
        final = eco.with_strength(sigma)
        with torch.no_grad():
            reached = forget_probability(final.wrap(model, tokenizer), tokenizer, forget)
        return final, {"steps": cfg.zo_steps, "sigma": sigma, "target_probability": target,
                       "forget_probability": reached, "final": rows[-1]}


__all__ = ["ECO", "ECOConfig", "DetectorConfig", "HASHING", "MINILM", "fit_detector"]
