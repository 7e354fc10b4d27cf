"""Smoke runs of the evidence experiments (benchmarks/exp_*.py --quick) on the embedded model.

The model loads once for all three; each quick run takes seconds after that. Skipped when the
embedded SmolLM2 or the GSM8K file is not installed.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from epic_kernels import evidence as ev

ROOT = Path(__file__).resolve().parent.parent


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def smol():
    # the set-up installs the model and CI clones the repository beside ../shared: both must exist
    assert ev.DEFAULT_DATA.is_file(), f"held-out data {ev.DEFAULT_DATA} not found (../shared/data beside the repo)"
    model, tok, _ = ev.load_model_quietly()
    return model, tok


@pytest.mark.parametrize("name", ["exp_calibration", "exp_trajectories", "exp_diversity"])
def test_quick_run(smol, tmp_path, capsys, name):
    model, tok = smol
    out, png = tmp_path / "out.json", tmp_path / "plot.png"
    # one thread: pytest imported torch before OMP_WAIT_POLICY=PASSIVE could be set, and with two
    # threads OpenMP's active spin-wait made these runs 5-10x slower on the loaded shared machine
    argv = ["--quick", "--json", str(out), "--plot", str(png), "--no-progress", "--threads", "1"]
    if name != "exp_calibration":
        argv += ["--alpha", "0.3"]
    threads = torch.get_num_threads()
    try:
        assert _load_script(name).main(argv, model=model, tok=tok) == 0
    finally:
        torch.set_num_threads(threads)
    table = capsys.readouterr().out
    assert "|---|" in table and "EPIC" in table
    rec = json.loads(out.read_text())
    assert isinstance(rec["alpha"], float)
    assert png.stat().st_size > 10_000


def test_metrics():
    assert ev.distinct_n(["a b a b"], 1) == 0.5
    assert ev.distinct_n(["a b c", "a b d"], 2) == 3 / 4
    assert ev.self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(100.0)
    assert ev.self_bleu(["the cat sat on the mat", "completely different words here now"]) < 10
    assert ev.clean_answer("2 * 3 = <<2*3=6>>6 eggs") == "2 * 3 = 6 eggs"
