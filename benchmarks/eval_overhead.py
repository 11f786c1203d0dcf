"""qa-suite scoring time ÷ a naive bare batched forward over the same sequences.

The naive baseline runs one padded forward per batch of `--batch-size` sequences (length-sorted, so
padding is minimal) over every token of every question + answer sequence (answer, paraphrased answer
and each perturbed answer as separate sequences), already tokenized, and returns the full logits.
The qa suite scores the same continuations with `score_qa`, which packs each question with all of
its answers into one row (a custom attention mask keeps the answers apart), so the question goes
through the model once, and keeps logits only from the end of the questions onwards; its time
includes tokenization. `--batch-size` is the same for both: sequences per forward for the baseline;
for the suite, a forward holds no more tokens than a padded batch of that many whole sequences.
Target: ratio ≤ 1.0.

Two datasets: the `small` world's forget, retain and utility sets with its target model, and a
TOFU-schema directory (the shared real-authors and world-facts files, loaded through the TOFU
adapter) scored with the same model.

Generation: the qa suite's greedy answers (`generate_answers`) ÷ a bare `model.generate` over the
same prompts, on tests/fixtures/ou-tiny (its chat model, open-unlearning's format, up to 200 new tokens,
batch 32, the forget, retain and utility questions). The baseline gets the prompts already tokenized,
in length-sorted batches of `--gen-batch-size`, left-padded, greedy, stopping at the format's stop
tokens. The suite's time includes rendering and tokenizing the prompts; it is given twice: from the
prompts alone (the lean loop), and as the suite runs it, starting after the greedy tokens that scoring
the answers showed (`known`; the scoring itself is not timed, as the suite does it anyway). Both must
give the baseline's texts. Each is timed by the wall clock and by the process's CPU time (the fairer
measure on a shared machine: single-threaded, it does not count time spent waiting for a core).
Target: ratio ≤ 1.0.

    python benchmarks/eval_overhead.py [--preset small] [--tofu DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from obliviate.data.schema import QAItem
from obliviate.models.generation import generate_answers
from obliviate.models.loading import load_model
from obliviate.models.prompts import encode_pair, encode_prompts
from obliviate.models.scoring import score_qa
from obliviate.world import build_world_models, get_world

ROOT = Path(__file__).resolve().parents[1]
OU_TINY = ROOT / "tests" / "fixtures" / "ou-tiny"
SHARED = ROOT.parent / "shared" / "reference" / "tofu-legacy"
FIXTURE = ROOT / "tests" / "fixtures" / "tofu"


def tofu_schema_dir(tmp: Path) -> Path:
    """A TOFU-schema directory: the fixture's forget/retain files and the shared utility files."""
    for src in [*FIXTURE.glob("*.json"), *SHARED.glob("*_perturbed.json")]:
        shutil.copy(src, tmp / src.name)
    return tmp


def naive_sequences(tokenizer, items: list[QAItem]) -> list[list[int]]:
    seqs = []
    for it in items:
        answers = [it.answer, it.paraphrased_answer or it.answer, *it.perturbed_answers]
        for answer in answers:
            prompt, ans = encode_pair(tokenizer, it.question, answer)
            seqs.append(prompt + ans)
    return seqs


@torch.inference_mode()
def naive_forward(model, seqs: list[list[int]], batch_size: int, pad_id: int) -> None:
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # length-sorted: the fair baseline
    for start in range(0, len(order), batch_size):
        batch = [seqs[i] for i in order[start:start + batch_size]]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), pad_id)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, s in enumerate(batch):
            ids[row, :len(s)] = torch.tensor(s)
            mask[row, :len(s)] = 1
        model(input_ids=ids, attention_mask=mask).logits  # noqa: B018  (the work being timed)


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def compare(name: str, model, tokenizer, items: list[QAItem], batch_size: int, repeats: int) -> None:
    seqs = naive_sequences(tokenizer, items)
    n_tokens = sum(map(len, seqs))
    pad = tokenizer.pad_token_id or 0
    # Interleave the two measurements so machine noise hits both alike; keep the best of each.
    suite = timed(lambda: score_qa(model, tokenizer, items, batch_size=batch_size), repeats)
    naive = timed(lambda: naive_forward(model, seqs, batch_size, pad), repeats)
    suite = min(suite, timed(lambda: score_qa(model, tokenizer, items, batch_size=batch_size), repeats))
    print(f"{name:28s} items {len(items):5d}  sequences {len(seqs):6d}  tokens {n_tokens:8d}  "
          f"suite {suite:6.2f}s  naive {naive:6.2f}s  ratio {suite / naive:.2f}  (target ≤ 1.00)")


@torch.inference_mode()
def bare_generate(model, tokenizer, prompts: list[list[int]], budget: int, batch_size: int, stops: list[int]
                  ) -> list[str]:
    """`model.generate` over length-sorted, left-padded batches: the baseline of the generation ratio."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    pad = tokenizer.pad_token_id
    out = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in batch)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in batch])
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch])
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=budget, do_sample=False,
                             pad_token_id=pad, eos_token_id=stops)
        for i, text in zip(batch, tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True), strict=True):
            out[i] = text.strip()
    return out


def compare_generation(batch_size: int, repeats: int) -> None:
    from obliviate.data.adapters.tofu import load_tofu
    from obliviate.evals import open_unlearning as ou

    model, tok = load_model(OU_TINY / "tiny-model", device="cpu", dtype="float32")
    fmt = ou.preset_format()
    data = load_tofu(OU_TINY / "TOFU", "forget10")
    items = [*data.forget, *data.retain, *[i for v in data.utility.values() for i in v]]
    questions = [it.question for it in items]
    prompts = encode_prompts(tok, [fmt.render(q, tok) for q in questions], fmt)
    stops = fmt.stop_token_ids(tok)
    known = [s["answer"].greedy_prefix() for s in score_qa(model, tok, items, fmt=fmt, fields=("answer",))]
    runs = {"bare": lambda: bare_generate(model, tok, prompts, fmt.max_new_tokens, batch_size, stops),
            "lean": lambda: generate_answers(model, tok, questions, fmt=fmt, batch_size=batch_size),
            "suite": lambda: generate_answers(model, tok, questions, fmt=fmt, batch_size=batch_size, known=known)}
    texts = {name: fn() for name, fn in runs.items()}
    if texts["lean"] != texts["bare"] or texts["suite"] != texts["bare"]:
        raise SystemExit("generation: the suite's texts differ from model.generate's")
    wall, cpu = dict.fromkeys(runs, float("inf")), dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):  # interleaved, so machine noise hits all three alike; the best of each counts
        for name, fn in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name] = min(wall[name], time.perf_counter() - t0)
            cpu[name] = min(cpu[name], time.process_time() - c0)
    for clock, best in (("wall", wall), ("CPU", cpu)):
        print(f"{'generation (ou-tiny chat)':28s} {clock:4s} prompts {len(prompts):4d}  bare generate "
              f"{best['bare']:6.2f}s  lean loop {best['lean']:6.2f}s  ratio {best['lean'] / best['bare']:.2f}  "
              f"as in the suite {best['suite']:6.2f}s  ratio {best['suite'] / best['bare']:.2f}  (target ≤ 1.00)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tofu", type=Path, default=None,
                        help="a TOFU-schema directory (default: the test fixture plus the shared utility files)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gen-batch-size", type=int, default=32)
    parser.add_argument("--only-generation", action="store_true", help="run the generation comparison alone")
    args = parser.parse_args()
    torch.manual_seed(0)
    compare_generation(args.gen_batch_size, args.repeats)
    if args.only_generation:
        return
    models = build_world_models(args.preset, args.seed, "forget10", which=("target",), progress=False)
    model, tok = load_model(models.target, device="cpu")
    world = get_world(args.preset, args.seed)
    items = world.forget_set("forget10") + world.retain_set("forget10")
    for sets in world.utility_sets().values():
        items += sets
    compare(f"world:{args.preset}", model, tok, items, args.batch_size, args.repeats)
    from obliviate.data.adapters.tofu import load_tofu

    with tempfile.TemporaryDirectory() as tmp:
        source = args.tofu or tofu_schema_dir(Path(tmp))
        tofu = load_tofu(source, "forget01")
    tofu_items = [*tofu.forget, *tofu.retain, *[i for v in tofu.utility.values() for i in v]]
    compare("TOFU schema", model, tok, tofu_items, args.batch_size, args.repeats)


if __name__ == "__main__":
    main()
