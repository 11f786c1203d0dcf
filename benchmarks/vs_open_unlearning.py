"""Whole-process wall time of open-unlearning's TOFU evaluation ÷ obliviate's, on the same model and data.

Both evaluate `tests/fixtures/ou-tiny/tiny-model` against `tiny-model-retain` on the fixture's TOFU
directory, in open-unlearning's protocol (chat template, system prompt, date string, greedy generation
of up to 200 new tokens, batch 32): open-unlearning with `src/eval.py experiment=eval/tofu/default`, and
obliviate with `obliviate eval --preset open-unlearning`. Each runs `--repeats` times, alternating, as a
fresh process (imports included); the script prints each time, the machine's load beside it, and the
ratio of the medians. It also prints each process's CPU time (user + system, its children included) and
the ratio of their medians: on a shared machine the wall time also counts waiting for a core, the CPU
time much less so (both run torch single-threaded under `OMP_NUM_THREADS=1`; a tokenizer's own threads
count in CPU time, not in wall time). The retain model's reference results are made once for each,
untimed: open-unlearning's logs (`retain_logs_path`) and obliviate's evaluated oracle directory (`--oracle DIR`).

    python benchmarks/vs_open_unlearning.py --ou OU_CHECKOUT --ou-python OU_VENV/bin/python \\
        --ou-config-path OVERLAY_DIR [--repeats 3]

OVERLAY_DIR is a Hydra config directory passed as open-unlearning's primary `--config-path` (its
`eval.yaml` adds a searchpath back to open-unlearning's configs, and its `data/datasets/TOFU_*.yaml`
point `path:` at the TOFU directory); see tests/fixtures/ou-tiny/open_unlearning_values.json.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "ou-tiny"


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def ou_command(args, model: Path, out: Path, retain_logs: Path | None) -> list[str]:
    return [args.ou_python, "src/eval.py", "--config-path", str(args.ou_config_path), "--config-name", "eval.yaml",
            "experiment=eval/tofu/default", f"task_name={model.name}",
            f"model.model_args.pretrained_model_name_or_path={model}",
            f"model.tokenizer_args.pretrained_model_name_or_path={model}",
            "model.model_args.attn_implementation=sdpa", "model.model_args.torch_dtype=float32",
            "forget_split=forget10", "holdout_split=holdout10",
            f"retain_logs_path={retain_logs if retain_logs else 'null'}", f"paths.output_dir={out}"]


def obliviate_command(model: Path, out: Path, oracle: Path | None, generate: bool = True) -> list[str]:
    return [sys.executable, "-m", "obliviate", "eval", str(model), "--data", f"tofu:forget10@{FIXTURE / 'TOFU'}",
            *(["--oracle", str(oracle)] if oracle else []), "--preset", "open-unlearning", "--out", str(out),
            "--json", *([] if generate else ["--no-generate"])]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of `command`."""
    t0, c0 = time.perf_counter(), children_cpu()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0, children_cpu() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ou", type=Path, required=True, help="an open-unlearning checkout")
    parser.add_argument("--ou-python", required=True, help="the python of open-unlearning's environment")
    parser.add_argument("--ou-config-path", type=Path, required=True, help="the Hydra overlay directory")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        retain_out = tmp / "ou-retain"
        subprocess.run(ou_command(args, FIXTURE / "tiny-model-retain", retain_out, None), cwd=args.ou, env=env,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        logs = retain_out / "TOFU_EVAL.json"
        oracle = tmp / "ob-retain"
        subprocess.run(obliviate_command(FIXTURE / "tiny-model-retain", oracle, None, generate=False), cwd=ROOT,
                       env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times: dict[str, list[float]] = {"open-unlearning": [], "obliviate": []}
        cpu: dict[str, list[float]] = {"open-unlearning": [], "obliviate": []}
        for i in range(args.repeats):
            runs = (("open-unlearning", ou_command(args, FIXTURE / "tiny-model", tmp / f"ou-{i}", logs), args.ou),
                    ("obliviate", obliviate_command(FIXTURE / "tiny-model", tmp / f"ob-{i}", oracle), ROOT))
            for name, command, cwd in runs:
                wall, used = timed(command, cwd, env)
                times[name].append(wall)
                cpu[name].append(used)
                print(f"{name} run {i + 1}: {wall:.1f} s, CPU {used:.1f} s ({load()})", flush=True)
    ou_med, ob_med = statistics.median(times["open-unlearning"]), statistics.median(times["obliviate"])
    ou_cpu, ob_cpu = statistics.median(cpu["open-unlearning"]), statistics.median(cpu["obliviate"])
    print(f"median: open-unlearning {ou_med:.1f} s, obliviate {ob_med:.1f} s; "
          f"open-unlearning ÷ obliviate = {ou_med / ob_med:.2f}× ({os.cpu_count()} cores)")
    print(f"median CPU: open-unlearning {ou_cpu:.1f} s, obliviate {ob_cpu:.1f} s; "
          f"open-unlearning ÷ obliviate = {ou_cpu / ob_cpu:.2f}×")


if __name__ == "__main__":
    main()
