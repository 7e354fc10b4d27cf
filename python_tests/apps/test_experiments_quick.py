"""Smoke runs of the evidence experiments (experiments/exp_*.py --quick) on the embedded model, and
the helpers of experiments/common.py.

The model loads once for both; each quick run takes seconds after that. The held-out data is the
GSM8K slice in the repository (experiments/data/gsm8k), so a plain clone runs these.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from experiments import common as ev

ROOT = Path(__file__).resolve().parents[2]


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def smol():
    model, tok, _ = ev.load()
    return model, tok


def _quiet_main(mod, argv, model, tok):
    # one thread: pytest imported torch before OMP_WAIT_POLICY=PASSIVE could be set, and with two
    # threads OpenMP's active spin-wait made these runs 5-10x slower on the loaded shared machine
    threads = torch.get_num_threads()
    try:
        return mod.main(argv + ["--no-progress", "--threads", "1"], model=model, tok=tok)
    finally:
        torch.set_num_threads(threads)


def test_trajectories_quick(smol, tmp_path, capsys):
    model, tok = smol
    out, png = tmp_path / "out.json", tmp_path / "plot.png"
    argv = ["--quick", "--json", str(out), "--plot", str(png), "--alpha", "0.3"]
    assert _quiet_main(_load_script("exp_trajectories"), argv, model, tok) == 0
    table = capsys.readouterr().out
    assert "|---|" in table and "EPIC" in table
    assert isinstance(json.loads(out.read_text())["alpha"], float)
    assert png.stat().st_size > 10_000


def test_evidence_quick(smol, tmp_path, capsys):
    """The evidence driver end to end (tiny calibration, 3 prompts, 12 tokens), then the same tables
    and plots again from its JSON alone."""
    model, tok = smol
    mod = _load_script("exp_evidence")
    out, prefix = tmp_path / "evidence.json", tmp_path / "img" / "ev"
    prefix.parent.mkdir()
    assert _quiet_main(mod, ["--quick", "--json", str(out), "--plot", str(prefix)], model, tok) == 0
    printed = capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert rec["complete"] and isinstance(rec["alpha"], float) and rec["calibration"]["source"] == "calibrate_alpha"
    s = rec["settings"]
    names = [r["method"] for r in rec["results"]]
    # the calibration table's decoders first (a run cut short keeps them), then the other knob settings
    assert names == [ev.baseline(*fv).name for fv in mod.QUICK_MAIN] + [ev.epic(rec["alpha"]).name, "EPIC a=0.5"] \
        + [ev.baseline(*fv).name for fv in mod.QUICK_MORE]
    assert sum(r["calibrated"] for r in rec["results"]) == 1
    for r in rec["results"]:
        assert len(r["entropy"]) == len(r["nll"]) == len(r["texts"]) == s["prompts"]
        assert all(1 <= len(e) <= s["max_new_tokens"] for e in r["entropy"])
        assert [len(e) for e in r["entropy"]] == r["lengths"]
        assert len(r["diversity_texts"]) == len(r["self_bleu"]) == s["div_prompts"]
        assert all(len(g) == s["div_samples"] for g in r["diversity_texts"])
    for L in s["lengths"]:
        assert f"### Calibration at L = {L}" in printed
        # every EPIC point (alpha* and the other alphas) is a row of every length's calibration table
        section = printed.split(f"### Calibration at L = {L}")[1].split("###")[0]
        for r in rec["results"]:
            assert (f"| {r['method']} " in section) == (r["family"] == "EPIC" or r["main"]), (L, r["method"])
    for part in ("Figure 4", "by position", "Diversity", "accuracy", "Cost", "EPIC"):
        assert part in printed
    for kind in ("calibration", "fig4", "drift", "diversity"):
        assert (tmp_path / "img" / f"ev-{kind}.png").stat().st_size > 10_000
    # --from-json: no model run, the same tables
    again = tmp_path / "again"
    assert mod.main(["--from-json", str(out), "--plot", str(again)]) == 0
    assert capsys.readouterr().out == printed
    assert (tmp_path / "again-fig4.png").is_file()
    # --resume with every operating point done decodes nothing and gives the same results
    resumed = tmp_path / "resumed.json"
    assert _quiet_main(mod, ["--quick", "--json", str(resumed), "--resume", str(out)], model, tok) == 0
    assert [r["texts"] for r in json.loads(resumed.read_text())["results"]] == [r["texts"] for r in rec["results"]]
    with pytest.raises(SystemExit, match="settings differ"):
        _quiet_main(mod, ["--quick", "--seed", "1", "--resume", str(out)], model, tok)


@pytest.mark.parametrize("family,value", [("temperature", 0.7), ("top-p", 0.9), ("eta", 0.01)])
def test_measured_while_decoding_is_the_teacher_forced_score(smol, family, value):
    """hf_generate(measure=True) records H(q) and -log q of the untruncated temperature-1 distribution
    (not of the warped one it samples from), the same numbers ``score`` computes afterwards."""
    model, tok = smol
    prompts = ev.prompt_ids(tok, [r["question"] for r in ev.load_gsm8k(ev.DEFAULT_DATA, 3, 500)])
    from epic_kernels.models import eos_ids

    eos = eos_ids(model, tok)
    gens, measured = ev.hf_generate(model, prompts, ev.baseline(family, value), max_new_tokens=10, seed=0, eos=eos,
                                    batch_size=3, measure=True)
    assert gens == ev.hf_generate(model, prompts, ev.baseline(family, value), max_new_tokens=10, seed=0, eos=eos,
                                  batch_size=3)
    for m, s in zip(measured, ev.score(model, prompts, gens)):
        assert len(m.entropy) == len(m.nll) == len(s.entropy) > 0
        assert m.entropy == pytest.approx(s.entropy, abs=2e-3)
        assert m.nll == pytest.approx(s.nll, abs=2e-3)


def test_bootstrap_helpers():
    import numpy as np

    idx = ev.bootstrap_indices(5, 300, seed=0)
    assert idx.shape == (300, 5) and idx.min() >= 0 and idx.max() <= 4
    assert (idx == ev.bootstrap_indices(5, 300, seed=0)).all()              # paired across decoders
    num, den = [1.0, 2.0, 3.0, 4.0, 100.0], [1, 1, 1, 1, 10]
    draws = ev.ratio_draws(num, den, idx)
    lo, hi = ev.interval(draws)
    assert lo < sum(num) / sum(den) < hi and lo >= 1.0 and hi <= 10.0
    assert np.allclose(ev.ratio_draws(num, den, np.arange(5)[None]), [110 / 14])
    assert ev.mean_draws([1.0, float("nan"), 3.0], np.array([[0, 1, 2], [1, 1, 2]])).tolist() == [2.0, 3.0]
    assert all(x != x for x in ev.interval([float("nan")] * 3))                 # NaN, NaN
    constant = ev.interval([2.0] * 50)
    assert constant == (2.0, 2.0)


def test_final_number_and_eta():
    assert ev.final_number("so 3 + 4 = 7 apples.\n#### 1,200") == "1200"
    assert ev.final_number("She has 12.50 dollars, then 18.0") == "18"
    assert ev.final_number("no digits") is None
    assert ev.final_number(ev.clean_answer("2*3=<<2*3=6>>6\n#### 6")) == "6"
    m = ev.baseline("eta", 0.001)
    assert m.name == "eta 0.001" and m.hf == dict(eta_cutoff=0.001, top_k=0, temperature=1.0)


def test_metrics():
    assert ev.distinct_n(["a b a b"], 1) == 0.5
    assert ev.distinct_n(["a b c", "a b d"], 2) == 3 / 4
    assert ev.self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(100.0)
    assert ev.self_bleu(["the cat sat on the mat", "completely different words here now"]) < 10
    assert ev.clean_answer("2 * 3 = <<2*3=6>>6 eggs") == "2 * 3 = 6 eggs"


def test_default_data_is_in_the_repository():
    """A clone needs nothing beside it: the GSM8K slice, its licence and attribution are committed,
    and the slice holds every line the experiments read by default (evaluation prompts from 500)."""
    data = ev.DEFAULT_DATA
    assert data.is_relative_to(ROOT) and data.is_file()
    assert data.stat().st_size < 1_000_000
    assert "MIT License" in (data.parent / "LICENSE").read_text()
    assert "openai/grade-school-math" in (data.parent / "README.md").read_text()
    records = ev.load_gsm8k(data, 100, 500)                   # lines 500-599: --prompts up to 100
    assert all(r["question"] and "<<" not in r["answer"] for r in records)
    with pytest.raises(SystemExit, match="holds only 0 records from line 600"):
        ev.load_gsm8k(data, 1, 600)


def test_left_pad_takes_id_lists_and_tensors():
    ids, mask = ev.left_pad([[5, 6, 7], torch.tensor([[8]])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_md_table_formats():
    table = ev.md_table(["a", "b"], [[0.12345, 1234.5], [float("nan"), None]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 0.12 | 1234 |", "| n/a |  |"]
    assert ev.md_table(["a"], [[0.5]], 3).splitlines()[2] == "| 0.500 |"
    assert ev.std_error([1.0, 3.0, float("nan")]) == pytest.approx(1.0)

