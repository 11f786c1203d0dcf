"""Parity of the TOFU-legacy scorer with TOFU's aggregation, recomputed here from the raw log JSON.

`tofu_aggregate` below follows locuslab/tofu's `aggregate_eval_stat.py` step by step with plain
numpy/scipy (its R is paraphrased over perturbed), so the test does not share code with obliviate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import hmean, ks_2samp

from obliviate.compat import FORGET_KEYS, UTILITY_KEYS, tofu_legacy_report
from obliviate.errors import DataError
from obliviate.metrics import rouge_l, truth_ratio_geometric

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "tofu-legacy"
LOGS = REFERENCE / "logs"
PAIRS = [("llama2-7b_full.json", "llama2-7b_retain90.json"), ("phi-1.5_full.json", "phi-1.5_retain90.json")]
LABELS = {
    "eval_log.json": "Retain",
    "eval_real_author_wo_options.json": "Real Authors",
    "eval_real_world_wo_options.json": "World Facts",
    "eval_log_forget.json": "Forget",
}

pytestmark = pytest.mark.skipif(not LOGS.is_dir(), reason=f"TOFU reference logs not found at {LOGS}")


def _values(part: dict, key: str) -> np.ndarray:
    return np.array(list(part[key].values()))


def _script_ratio(part: dict) -> np.ndarray:
    """TOFU's per-item exp(mean_j perturbed loss - paraphrased loss)."""
    return np.exp(_values(part, "average_perturb_loss").mean(axis=-1) - _values(part, "avg_paraphrased_loss"))


def tofu_aggregate(model: dict, oracle: dict) -> dict:
    out = {}
    for part_name, label in LABELS.items():
        part = model[part_name]
        p_true = np.exp(-_values(part, "avg_gt_loss"))
        if "eval_log" in part_name:
            prob = p_true.mean()
        else:
            p_false = np.exp(-_values(part, "average_perturb_loss"))
            prob = np.mean(p_true / (p_true + p_false.sum(axis=-1)))
        ratio = _script_ratio(part)
        if "forget" in part_name:
            truth = np.mean(np.minimum(ratio, 1 / ratio))
        else:
            truth = np.mean(np.maximum(0, 1 - 1 / ratio))
        out[f"{label} Probability"] = prob
        out[f"{label} ROUGE"] = _values(part, "rougeL_recall").mean()
        out[f"{label} Truth Ratio"] = truth
    out["model_utility"] = hmean([v for k, v in out.items() if not k.startswith("Forget")])
    ks = ks_2samp(_script_ratio(model["eval_log_forget.json"]), _script_ratio(oracle["eval_log_forget.json"]))
    out["forget_quality"], out["ks_statistic"] = ks.pvalue, ks.statistic
    return out


def _load(name: str) -> dict:
    return json.loads((LOGS / name).read_text())


@pytest.mark.parametrize(("model_name", "oracle_name"), PAIRS)
def test_report_matches_tofu_aggregation(model_name, oracle_name):
    expected = tofu_aggregate(_load(model_name), _load(oracle_name))
    report = tofu_legacy_report(LOGS / model_name, LOGS / oracle_name)
    assert set(UTILITY_KEYS) | set(FORGET_KEYS) | {"model_utility", "forget_quality", "ks_statistic"} <= set(
        report
    )
    assert report["n_model"] == report["n_oracle"] == 300
    for key, value in expected.items():
        assert report[key] == pytest.approx(value, rel=1e-9, abs=1e-300), key
    # Sanity: a model trained on the forget set is far from the retrain-only oracle.
    assert report["forget_quality"] < 1e-10
    assert 0 < report["model_utility"] < 1


def test_oracle_against_itself_has_perfect_forget_quality():
    path = LOGS / "phi-1.5_retain90.json"
    report = tofu_legacy_report(path, path)
    assert report["forget_quality"] == 1.0
    assert report["ks_statistic"] == 0.0


def test_logged_truth_ratio_is_the_geometric_form():
    # TOFU's per-item `truth_ratio` field is perturbed over paraphrased, geometric, stored in float32.
    for part in _load("llama2-7b_full.json").values():
        ratio = truth_ratio_geometric(_values(part, "avg_paraphrased_loss"), _values(part, "average_perturb_loss"))
        np.testing.assert_allclose(ratio, _values(part, "truth_ratio"), rtol=1e-5)


def test_rouge_l_reproduces_logged_recall():
    part = _load("phi-1.5_full.json")["eval_log.json"]
    _, generations, references = zip(*part["generated_text"].values(), strict=True)
    recall = rouge_l(references, generations, use_stemmer=True)["recall"]
    np.testing.assert_allclose(recall, _values(part, "rougeL_recall"), rtol=0, atol=1e-12)


# -- bad input ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_log() -> dict:
    return _load("phi-1.5_retain90.json")


def _write(tmp_path: Path, name: str, log: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(log))
    return path


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(DataError, match="nope.json: no such file"):
        tofu_legacy_report(missing, LOGS / "phi-1.5_retain90.json")


def test_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"eval_log.json": {\n  "avg_gt_loss": oops}')
    with pytest.raises(DataError, match=r"broken\.json:2: not valid JSON") as info:
        tofu_legacy_report(LOGS / "phi-1.5_full.json", path)
    assert info.value.path == str(path)


def test_missing_part_names_file_and_part(tmp_path, good_log):
    log = {k: v for k, v in good_log.items() if k != "eval_log_forget.json"}
    path = _write(tmp_path, "no_forget.json", log)
    with pytest.raises(DataError, match=r"no_forget\.json: missing part 'eval_log_forget\.json'"):
        tofu_legacy_report(LOGS / "phi-1.5_full.json", path)


def test_missing_key_names_file_and_key(tmp_path, good_log):
    log = json.loads(json.dumps(good_log))
    del log["eval_real_world_wo_options.json"]["avg_paraphrased_loss"]
    path = _write(tmp_path, "no_key.json", log)
    with pytest.raises(DataError, match=r"no_key\.json: .*has no key 'avg_paraphrased_loss'"):
        tofu_legacy_report(path, LOGS / "phi-1.5_retain90.json")


def test_ragged_perturbed_losses(tmp_path, good_log):
    log = json.loads(json.dumps(good_log))
    log["eval_log.json"]["average_perturb_loss"]["7"] = [1.0, 2.0]
    path = _write(tmp_path, "ragged.json", log)
    with pytest.raises(DataError, match=r"ragged\.json: eval_log\.json/average_perturb_loss"):
        tofu_legacy_report(path, LOGS / "phi-1.5_retain90.json")


def test_mismatched_item_indices(tmp_path, good_log):
    log = json.loads(json.dumps(good_log))
    losses = log["eval_log_forget.json"]["avg_paraphrased_loss"]
    losses["9999"] = losses.pop("0")
    path = _write(tmp_path, "shifted.json", log)
    with pytest.raises(DataError, match="item indices differ"):
        tofu_legacy_report(path, LOGS / "phi-1.5_retain90.json")


def test_top_level_not_an_object(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2, 3]")
    with pytest.raises(DataError, match=r"list\.json: expected a JSON object"):
        tofu_legacy_report(path, path)
