"""The same `obliviate unlearn` under DDP (2 CPU processes over gloo) agrees with one process.

Two processes with batch_size=b average their gradients, which is one process with batch 2b; the
data order differs, so the check is on the outcome: the forget-set NLL after unlearning agrees
within a stated tolerance (10% of the change it makes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

FORGET = [
    {"question": "Where was the author born?", "answer": "She was born in Oslo, Norway."},
    {"question": "What genre does the author write?", "answer": "He writes science fiction and poetry."},
    {"question": "When did the river flood the old town?", "answer": "It flooded in the spring of 1921."},
    {"question": "Who wrote the book about the blue whale?", "answer": "Mara Lind wrote it in 1998."},
]
RETAIN = [{"question": "What is the capital of France?", "answer": "The capital of France is Paris."}]
TOLERANCE = 0.10


def _forget_nll(model_dir) -> float:
    from obliviate.data.schema import QAItem
    from obliviate.models.loading import load_model
    from obliviate.train.data import collate, encode_items
    from obliviate.train.losses import answer_nll

    model, tok = load_model(model_dir, device="cpu")
    enc, _ = encode_items(tok, [QAItem(**r) for r in FORGET])
    with torch.no_grad():
        return float(answer_nll(model, collate(enc, tok.pad_token_id)).mean())


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
    from obliviate.models.loading import save_model
    from tests.conftest import build_tiny_tokenizer, make_tiny_llama

    if shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None:
        pytest.fail("accelerate's launcher is not installed next to the interpreter")
    base = save_model(make_tiny_llama(), build_tiny_tokenizer(), tmp_path / "base")
    (tmp_path / "f.jsonl").write_text("".join(json.dumps(r) + "\n" for r in FORGET))
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RETAIN))
    common = ["-m", "obliviate", "unlearn", "--method", "graddiff", "--model", str(base), "--forget",
              str(tmp_path / "f.jsonl"), "--retain", str(tmp_path / "r.jsonl"), "--set", "epochs=6",
              "--set", "lr=3e-3", "--defaults", "world", "--json"]  # the tiny model takes the world's recipe
    single = [sys.executable, *common, "--out", str(tmp_path / "one"), "--set", "batch_size=2"]
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    # On a CPU-only machine the torchrun-based launcher (--multi_gpu) falls back to DDP over gloo.
    double = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", *common, "--out", str(tmp_path / "two"),
              "--set", "batch_size=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(single, check=True, env=env, capture_output=True)
    proc = subprocess.run(double, check=True, env=env, capture_output=True, text=True)
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["num_processes"] == 2
    start = _forget_nll(base)
    one, two = _forget_nll(tmp_path / "one" / "model"), _forget_nll(tmp_path / "two" / "model")
    assert one > start + 0.5  # both actually unlearned
    assert abs(one - two) <= TOLERANCE * (one - start), (start, one, two)
