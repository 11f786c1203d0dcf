"""Embedding-COrrupted prompts (ECO).

Liu et al. 2024, *Large Language Model Unlearning via Embedding-Corrupted Prompts* (code
`chrisliu298/llm-unlearn-eco`). The model is untouched; at inference:

1. a prompt classifier flags prompts about the forget set (`interventions/classifier.py`:
   sentence embeddings + logistic regression; threshold τ by split-conformal calibration on
   held-out forget prompts, so the false-negative rate is at most α; `holdout_fraction` of the forget
   and retain items stays out of training to report the false-negative and false-positive rates on
   their original and paraphrased questions, in the run's `classifier.json`);
2. for flagged prompts, a forward hook corrupts the input embeddings of the subject's tokens (all
   prompt tokens but the last when no subject appears), during the prefill only
   (`interventions/corruption.py`): `rand_noise_first_n` (default, k = 1), `rand_noise_top_k`,
   `zero_out_top_k`, `flip_sign_top_k`. When a prompt + answer is scored, the answer's subject
   tokens are corrupted too (every token but the last without a subject), as ECO's evaluator
   does (`corrupt_answers`, the default); `corrupt_answers=False` is this project's variant
   (`eco+prompt-only`), which corrupts the prompt only so that teacher-forced scores describe the
   distribution that generates;
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

from obliviate.data.schema import subject_name
from obliviate.errors import ConfigError
from obliviate.interventions.classifier import HASHING, MINILM
from obliviate.interventions.corruption import NOISY, EmbeddingCorruption
from obliviate.interventions.detector import fit_detector
from obliviate.interventions.regions import phrase_token_ids
from obliviate.methods.base import MethodConfig
from obliviate.methods.inference import InterventionMethod, item_kind


class DetectorConfig(MethodConfig):
    """The prompt classifier shared by ECO, GUARD and the gated prefix methods (`interventions/classifier.py`)."""

    embedder: Literal["minilm", "hashing"] = Field(
        MINILM, description="prompt embeddings: 'minilm' (all-MiniLM-L6-v2, needs the 'embed' extra) or "
        "'hashing' (character n-grams, no model)")
    prefilter: Literal["hashing", "none"] = Field(
        "hashing", description="'hashing': a hashing classifier screens prompts first and only those it flags are "
        "embedded by the main one; the two stages share alpha, so the false-negative bound still holds "
        "(interventions/classifier.py); 'none': the main classifier alone")
    prefilter_retain_share: float = Field(
        0.0, ge=0, lt=1, description="share of the retain training prompts the prefilter passes on to the main "
        "classifier (0: those scoring above all of them; its threshold is lower still when its share of alpha "
        "needs it)")
    alpha: float = Field(0.05, gt=0, lt=1, description="bound on the false-negative rate (conformal calibration)")
    calibration_fraction: float = Field(0.3, gt=0, lt=1, description="share of forget items held out to calibrate τ")
    threshold: float | None = Field(None, description="a fixed threshold τ on the forget probability instead")
    holdout_fraction: float = Field(
        0.2, ge=0, lt=1, description="share of forget and retain items (with all their question forms) kept out "
        "of the classifier's training and calibration to report its false-negative and false-positive rates")

    def detector_kwargs(self) -> dict:
        """The keyword arguments of `fit_detector` this config sets."""
        return {"embedder": self.embedder, "alpha": self.alpha, "calibration_fraction": self.calibration_fraction,
                "threshold": self.threshold, "holdout_fraction": self.holdout_fraction, "seed": self.seed,
                "prefilter": None if self.prefilter == "none" else self.prefilter,
                "prefilter_retain_share": self.prefilter_retain_share}


class GateConfig(DetectorConfig):
    """A prefix method's gate: the same prompt classifier decides which prompts get the prefix."""

    gate: Literal["none", "classifier"] = Field(
        "none", description="'none': add the prefix to every prompt, as in the paper; 'classifier': only to "
        "prompts the forget-prompt classifier flags, as ECO and GUARD gate their interventions (this project's "
        "variant, reported as METHOD+gate)")


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
    corrupt_answers: bool = Field(
        True, description="when scoring prompt + answer, corrupt the answer's subject tokens too, as ECO's "
        "evaluator does (False: the prompt only, this project's variant)")
    target_probability: float | None = Field(
        None, ge=0, le=1, description="f*, the forget-answer probability to reach (default: chance, the "
        "perturbed answers' probability)")


class ECO(InterventionMethod):
    name = "eco"
    paper = "Liu et al. 2024, Large Language Model Unlearning via Embedding-Corrupted Prompts"
    summary = "flag forget prompts with a classifier; corrupt their embeddings, σ tuned by zeroth-order descent"
    Config = ECOConfig
    uses_retain = True
    variants = {"prompt-only": {"corrupt_answers": False}}

    def build(self, model, tokenizer, forget, retain, out_dir, progress, resume):
        cfg = self.config
        item_kind(forget, self.name)
        item_kind(retain, self.name)
        detector, report = fit_detector(tokenizer, forget, retain, **cfg.detector_kwargs(), method=self.name)
        subjects = list(dict.fromkeys(filter(None, map(subject_name, forget)))) if cfg.target == "subject" else []
        emb = model.get_input_embeddings().weight
        scale = float(emb.detach().float().norm(dim=-1).mean())
        eco = EmbeddingCorruption(detector, cfg.corruption, cfg.strength, cfg.dims, scale,
                                  phrase_token_ids(tokenizer, subjects), cfg.seed, skip_ids=tokenizer.all_special_ids,
                                  corrupt_answers=cfg.corrupt_answers)
        summary = {"classifier": report, "sigma": cfg.strength}
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


__all__ = ["ECO", "ECOConfig", "DetectorConfig", "GateConfig", "HASHING", "MINILM"]
