"""Peak memory of reference-based methods (NPO, KL) with LoRA, as a ratio to GA with LoRA.

With LoRA on, π_ref is the same model with its adapter disabled, so no second copy of the weights
is held; the target is a ratio ≤ 1.15. The same is measured without LoRA for `--ref precompute`
(reference log-probs cached once) and `--ref copy` (a frozen second copy: the ratio to expect from
a naive implementation).

Each configuration runs in a fresh subprocess. On CPU the figure is the peak resident set size
above the process's size before the model was built; on a GPU it is torch's peak allocated memory.

    python benchmarks/ref_memory.py [--hidden 1024] [--layers 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

# (method, lora or full, ref mode). NPO runs without its retain term so that, like GA, it makes
# one forward/backward pass over the forget batch: the difference is the reference alone. KL always
# has a retain pass, so it is also shown against GradDiff, which makes the same passes.
CASES = [
    ("ga", "lora", "auto"), ("graddiff", "lora", "auto"), ("npo", "lora", "auto"), ("kl", "lora", "auto"),
    ("ga", "full", "auto"), ("graddiff", "full", "auto"), ("npo", "full", "precompute"), ("npo", "full", "copy"),
    ("kl", "full", "copy"),
]


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def child(method: str, mode: str, ref: str, hidden: int, layers: int) -> None:
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401  (imports are not the method's memory)
    from _common import bench_model, forget_retain

    from obliviate.config import build_config
    from obliviate.methods import get_method
    from obliviate.models.lora import apply_lora, parse_lora

    torch.set_num_threads(1)
    before = _rss_mb()
    model, tok = bench_model(hidden, layers)
    if mode == "lora":
        model = apply_lora(model, parse_lora("r=8,alpha=16"))
    cls = get_method(method)
    values = {"epochs": 1, "batch_size": 4, "lr": 1e-5}
    if "ref" in cls.Config.model_fields:
        values["ref"] = ref
    if method == "npo":
        values["retain_loss"] = "none"
    forget, retain = forget_retain(16)
    cuda = torch.cuda.is_available()
    if cuda:
        model.cuda()
        torch.cuda.reset_peak_memory_stats()
    cls(build_config(cls.Config, values)).unlearn(model, tok, forget, retain, Path("/tmp/obliviate-refmem"),
                                                  progress=False)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    print(json.dumps({"peak_mb": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.hidden, args.layers)
    peaks = {}
    for method, mode, ref in CASES:
        cmd = [sys.executable, __file__, "--child", method, mode, ref, "--hidden", str(args.hidden),
               "--layers", str(args.layers)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=Path(__file__).parent).stdout
        peaks[(method, mode, ref)] = json.loads(out.strip().splitlines()[-1])["peak_mb"]
    print(f"peak memory above the empty process, Llama hidden {args.hidden} × {args.layers} layers")
    for (method, mode, ref), mb in peaks.items():
        base = peaks[("ga", mode, "auto")]
        target = "  (target ≤ 1.15)" if mode == "lora" and method in ("npo", "kl") else ""
        extra = f"   to GradDiff {mb / peaks[('graddiff', mode, 'auto')]:5.2f}" if method == "kl" else ""
        print(f"  {method:8s} {mode:4s} ref={ref:10s} {mb:8.1f} MB   ratio to GA ({mode}) {mb / base:5.2f}"
              f"{extra}{target}")


if __name__ == "__main__":
    main()
