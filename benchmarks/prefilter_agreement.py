"""Does the hashing prefilter change what the prompt classifier flags? The cascade against MiniLM alone.

The prompt classifier of ECO, GUARD and the gated prefix methods is fitted twice on the world's
forget and retain training items, as `obliviate unlearn` fits it: with its default prefilter (a
hashing classifier screens prompts, MiniLM scores those it passes) and with `prefilter=none`
(MiniLM scores every prompt). Both then read the same prompts the way a wrapped model reads them (the
prompt encoded, the question found in its token row): the world's evaluation questions with their
paraphrased forms, and every prompt-based robustness attack's prompts against the world's target
(cloze and multiple-choice forms, jailbreak preambles, facts in context, stepwise questions). For each
group it prints how many prompts each classifier flags, how many decisions differ, and the share
of prompts the prefilter passes on to MiniLM (what the cascade costs).

    python benchmarks/prefilter_agreement.py [--preset small] [--seed 0] [--split forget10]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from obliviate.attacks import ATTACKS  # noqa: E402
from obliviate.attacks.facts import world_sets  # noqa: E402
from obliviate.attacks.measure import PromptAttack  # noqa: E402
from obliviate.interventions.detector import Detector, fit_detector  # noqa: E402
from obliviate.models.loading import load_model  # noqa: E402
from obliviate.models.prompts import DEFAULT_FORMAT, encode_prompts  # noqa: E402
from obliviate.world import build_world_models, get_world  # noqa: E402


def read_flags(detector: Detector, tokenizer, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(flags, passed by the prefilter) of each prompt, read from its token row as a wrapped model reads it."""
    flags, passed = [], []
    for ids in encode_prompts(tokenizer, prompts):
        row = torch.tensor([ids])
        flag, _, questions = detector.flags(tokenizer, row, torch.ones_like(row))
        flags.append(bool(flag[0]))
        passed.append(bool(detector.classifier.screens(questions)[0]))
    return np.array(flags), np.array(passed)


def prompt_groups(preset: str, seed: int, split: str, model, tokenizer) -> dict[str, list[str]]:
    """Name → prompts: the world's question sets (with paraphrases), then each prompt attack's prompts."""
    world = get_world(preset, seed)
    sets = {"forget set": world.forget_set(split), "retain set": world.retain_set(split),
            "holdout": world.holdout_set(), **world.utility_sets()}
    groups = {name: [DEFAULT_FORMAT.render(q) for it in items for q in (it.question, *it.paraphrased_questions)]
              for name, items in sets.items()}
    attack_sets = world_sets(preset, seed, split)
    for name, cls in ATTACKS.items():
        if issubclass(cls, PromptAttack):
            groups[f"attack: {name}"] = [p.prompt.rstrip(" ") for p in cls().prompts(model, tokenizer, attack_sets)]
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--alpha", type=float, default=0.05, help="the classifier's false-negative bound")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    models = build_world_models(args.preset, args.seed, args.split, which=("target",), progress=False)
    model, tok = load_model(models.target, device="cpu")
    world = get_world(args.preset, args.seed)
    forget, retain = world.forget_train(args.split), world.retain_train(args.split)
    alone, _ = fit_detector(tok, forget, retain, alpha=args.alpha, prefilter=None)
    cascade, report = fit_detector(tok, forget, retain, alpha=args.alpha, prefilter="hashing")
    if cascade.classifier.prefilter is None:
        print(f"world:{args.preset}@{args.seed} {args.split}: too few calibration groups for a prefilter at "
              f"alpha {args.alpha} ({report['n_calibration']}, it needs {2 / args.alpha - 1:.0f}); "
              "the classifier is MiniLM alone")
        return
    print(f"world:{args.preset}@{args.seed} {args.split}  alpha {args.alpha}  "
          f"prefilter τ = {cascade.classifier.prefilter.threshold:.3f}  "
          f"MiniLM τ = {alone.classifier.threshold:.3f} alone, {cascade.classifier.threshold:.3f} behind the prefilter")
    print(f"{'prompts':24s} {'n':>6s} {'MiniLM alone':>13s} {'cascade':>8s} {'differ':>7s} {'to MiniLM':>10s}")
    totals = np.zeros(4, dtype=int)
    for name, prompts in prompt_groups(args.preset, args.seed, args.split, model, tok).items():
        a, _ = read_flags(alone, tok, prompts)
        c, passed = read_flags(cascade, tok, prompts)
        counts = np.array([len(prompts), a.sum(), c.sum(), (a != c).sum()])
        totals += counts
        print(f"{name:24s} {counts[0]:6d} {counts[1]:13d} {counts[2]:8d} {counts[3]:7d} {passed.mean():10.3f}",
              flush=True)
    print(f"{'all':24s} {totals[0]:6d} {totals[1]:13d} {totals[2]:8d} {totals[3]:7d}")


if __name__ == "__main__":
    main()
