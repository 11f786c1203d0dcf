"""Check the `real_facts` task against a model by greedy generation, and regenerate it from its candidates.

Each question is rendered with the model's chat template and answered greedily (up to `--max-new-tokens`
tokens, stopping at the end of the turn); an answer is correct when its first sentence states one of the item's
accepted spellings (`obliviate.data.tasks.answer_matches`: normalised whole words, "six" = "6"). Prints the
accuracy of each set, and the items answered wrongly.

    python scripts/real_facts.py                          # the shipped sets, on gguf:smollm2
    python scripts/real_facts.py --paraphrases            # also the reworded questions
    python scripts/real_facts.py --answers answers.jsonl  # and keep every generated answer
    python scripts/real_facts.py --select scripts/real_facts_candidates.jsonl --out obliviate/data/tasks/real_facts

`--select` checks a candidate pool (QA items with a `split` field: forget, neighbours or general) and
writes the items the model answers correctly into `<out>/<split>.jsonl`, which is how the shipped sets
were chosen. `--model` takes any model spec: a GGUF spec (`gguf:NAME`, `gguf:PATH`, `PATH.gguf`), a
local directory or a hub name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from obliviate.data.readers import load_items
from obliviate.data.tasks import TASK_SPLITS, answer_matches, first_sentence, item_aliases, task_dir
from obliviate.io import read_jsonl, write_jsonl


def answer_all(model, tokenizer, questions: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers under the tokenizer's chat template."""
    from obliviate.models.generation import generate_answers
    from obliviate.models.prompts import make_format

    fmt = make_format("chat", max_new_tokens=max_new_tokens)
    return generate_answers(model, tokenizer, questions, fmt=fmt, batch_size=16)


def check(model, tokenizer, items, max_new_tokens: int, paraphrases: bool) -> dict:
    """Per-item correctness of the questions (and, with `paraphrases`, of the first reworded question)."""
    answers = answer_all(model, tokenizer, [it.question for it in items], max_new_tokens)
    correct = [answer_matches(first_sentence(a), item_aliases(it)) for a, it in zip(answers, items, strict=True)]
    result = {"n": len(items), "accuracy": sum(correct) / len(items), "answers": answers, "correct": correct}
    if paraphrases:
        reworded = [it.paraphrased_questions[0] if it.paraphrased_questions else it.question for it in items]
        para = answer_all(model, tokenizer, reworded, max_new_tokens)
        result["paraphrase_accuracy"] = sum(answer_matches(first_sentence(a), item_aliases(it))
                                            for a, it in zip(para, items, strict=True)) / len(items)
    return result


def load_model_spec(spec: str, device: str):
    from obliviate.models.gguf import resolve_gguf_spec
    from obliviate.models.loading import load_model

    return load_model(resolve_gguf_spec(spec), device=device, dtype="float32")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gguf:smollm2")
    parser.add_argument("--task", default="real_facts", choices=sorted(TASK_SPLITS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--paraphrases", action="store_true", help="also score the first reworded question")
    parser.add_argument("--select", type=Path, help="a candidate pool (JSON Lines with a 'split' field)")
    parser.add_argument("--out", type=Path, help="with --select: where to write <split>.jsonl")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--answers", type=Path, help="write every question, the model's answer and its verdict here")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (1 by default: on a shared CPU, threads waiting on each other crawl)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.select and not args.out:
        parser.error("--select needs --out")

    model, tokenizer = load_model_spec(args.model, args.device)
    splits = TASK_SPLITS[args.task]
    if args.select:
        pool, rows = load_items(args.select, kind="qa"), read_jsonl(args.select)  # 'split' lands in meta
        chosen = {s: [i for i, it in enumerate(pool) if it.meta.get("split") == s] for s in splits}
        items = {s: [pool[i] for i in idx] for s, idx in chosen.items()}
    else:
        items = {s: load_items(task_dir(args.task) / f"{s}.jsonl", kind="qa") for s in splits}

    results = {s: check(model, tokenizer, its, args.max_new_tokens, args.paraphrases) for s, its in items.items()}
    report(results, items, args.json)
    if args.answers:
        write_jsonl(args.answers, [{"split": s, "question": it.question, "generation": a, "correct": ok}
                                   for s, res in results.items()
                                   for it, a, ok in zip(items[s], res["answers"], res["correct"], strict=True)])
    if args.select:
        for s, res in results.items():
            kept = [{k: v for k, v in rows[i].items() if k != "split"}
                    for i, ok in zip(chosen[s], res["correct"], strict=True) if ok]
            write_jsonl(args.out / f"{s}.jsonl", kept)
            print(f"{s}: kept {len(kept)} of {len(chosen[s])} -> {args.out / f'{s}.jsonl'}", file=sys.stderr)
    return 0


def report(results: dict, items: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps({s: {k: v for k, v in r.items() if k not in ("answers", "correct")}
                          for s, r in results.items()}, indent=2))
        return
    for s, res in results.items():
        for it, answer, ok in zip(items[s], res["answers"], res["correct"], strict=True):
            if not ok:
                print(f"  miss [{s}] {it.question} -> {answer!r} (want {it.meta.get('short_answer', it.answer)})")
    print(f"{'set':<12}{'items':>6}{'accuracy':>10}" + ("  paraphrased" if "paraphrase_accuracy" in
                                                         next(iter(results.values())) else ""))
    for s, res in results.items():
        para = f"  {res['paraphrase_accuracy']:>11.3f}" if "paraphrase_accuracy" in res else ""
        print(f"{s:<12}{res['n']:>6}{res['accuracy']:>10.3f}{para}")


if __name__ == "__main__":
    sys.exit(main())
