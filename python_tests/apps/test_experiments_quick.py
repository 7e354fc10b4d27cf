"""Smoke runs of the evidence experiments (experiments/exp_*.py --quick) on the embedded model, and
the helpers of experiments/common.py.

The model loads once for all three; each quick run takes seconds after that. The held-out data is the
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

