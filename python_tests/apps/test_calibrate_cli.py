"""epic-calibrate (epic_kernels.cli.calibrate) on the enumerable tiny model: the record it writes is
``calibrate_alpha``'s, and every bad argument is a one-line error with exit code 2 before any data is
read or model loads."""
from __future__ import annotations

import json
import re

import pytest
import torch

import epic_kernels.models as models
from epic_kernels.calibration import calibrate_alpha
from epic_kernels.cli.calibrate import main
from epic_kernels.testing import tiny_llama, tiny_tokenizer

V = 16


@pytest.fixture(scope="module")
def q():
    return tiny_llama(V, seed=1)


@torch.no_grad()
def sample_texts(model, n, length, seed):
    """``n`` ancestral samples of ``length`` tokens from the model (a fixed generator)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(2, V, (n, 1), generator=gen)
    for _ in range(length - 1):
        probs = torch.softmax(model(input_ids=x).logits[:, -1].to(torch.float64), -1)
        x = torch.cat([x, torch.multinomial(probs, 1, generator=gen)], 1)
    return x.tolist()


def _write(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _run(argv) -> int:
    """The exit code of ``main(argv)``, whether it returns or argparse exits."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def no_model(*_, **__):
    raise AssertionError("the model must not load for a bad argument")


@pytest.mark.parametrize("lines, extra, match", [
    (None, [], "not found"),
    (['{"text": "abcd"}', '{"other": "x"}'], [], "data.jsonl:2: no field 'text' \\(fields: other\\)"),
    (['{"text": "abcd"', ], [], "not valid JSON"),
    (['{"text": 3}'], [], "not a string"),
    ([""], [], "no records"),
    (['{"text": "abcd"}'], ["--samples", "0"], "argument --samples: value must be >= 1, got 0"),
    (['{"text": "abcd"}'], ["--bracket", "1", "0"], "LO < HI"),
    (['{"text": "abcd"}'], ["--bracket", "nan", "1"], "argument --bracket: must be a finite number"),
    (['{"text": "abcd"}'], ["--tol", "0"], "argument --tol: must be > 0"),
    (['{"text": "abcd"}'], ["--seed", "-1"], "argument --seed: value must be in \\[0, 4294967295\\], got -1"),
    (['{"text": "abcd"}'], ["--horizon", "65"], "--horizon must be in \\[1, 64\\], got 65"),
    (['{"text": "abcd"}'], ["--max-texts", "x"], "argument --max-texts: expected an integer, got 'x'"),
    (['{"text": "abcd"}'], ["--context-field", "q"], "no field 'q'"),
    (['{"text": "abcd"}'], ["--strip", "(("], "argument --strip: not a valid regular expression"),
    (['{"text": "abcd"}'], ["--out", "/no/such/dir/alpha.json"],
     "argument --out: cannot write '/no/such/dir/alpha.json': folder '/no/such/dir' does not exist"),
    (['{"text": "abcd"}'], ["--model", "/no/such/model"], "argument --model: '/no/such/model' does not exist"),
    (['{"text": "abcd"}'], ["--model", "{dir}"], "argument --model: '.*' is not a model directory \\(no config.json"),
])
def test_bad_input_exits_2_before_the_model_loads(tmp_path, capsys, monkeypatch, lines, extra, match):
    monkeypatch.setattr(models, "load_model", no_model)
    path = str(tmp_path / "missing.jsonl") if lines is None else _write(tmp_path, lines)
    (tmp_path / "not_a_model").mkdir()
    extra = [str(tmp_path / "not_a_model") if a == "{dir}" else a for a in extra]
    code = _run(["--data", path, "--field", "text", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert re.search(match, err), err


def test_out_that_is_a_folder_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(models, "load_model", no_model)
    code = _run(["--data", _write(tmp_path, ['{"text": "abcd"}']), "--field", "text", "--out", str(tmp_path)])
    assert code == 2 and "is a folder, not a file" in capsys.readouterr().err


def test_writes_alpha(tmp_path, capsys, monkeypatch, q):
    monkeypatch.setattr(models, "load_model", lambda path=None: (q, tiny_tokenizer(V)))
    texts = sample_texts(q, 16, 12, seed=9)
    letters = ["".join(chr(65 + t) for t in tx) for tx in texts]
    path = _write(tmp_path, [json.dumps({"text": s, "prompt": "CD"}) for s in letters])
    out = tmp_path / "alpha.json"
    argv = ["--data", path, "--field", "text", "--horizon", "1", "--rollouts", "1", "--samples", "8",
            "--top-k", "0", "--rollout-top-k", "0", "--tol", "1e-4", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    assert "alpha* =" in capsys.readouterr().out
    rec = json.loads(out.read_text())
    direct = calibrate_alpha(q, texts, horizon=1, rollouts=1, samples=8, tol=1e-4, progress=False)
    assert rec["alpha"] == direct.alpha and rec["tokens"] == direct.tokens == 16 * 11
    assert rec["settings"]["horizon"] == 1 and rec["settings"]["top_k"] is None
    for key in ("bracket", "mu_p", "mu_alpha", "ess_mean", "ess_fraction", "texts", "samples", "alpha_stderr"):
        assert key in rec
    # with a context field each text is the reply to its prompt, only the reply is scored (+ EOS)
    assert main(argv + ["--context-field", "prompt", "--max-texts", "3"]) == 0
    assert json.loads(out.read_text())["tokens"] == 3 * (12 + 1)
    assert main(argv + ["--max-texts", "3", "--strip", "[A-D]"]) == 0      # drops tokens 0-3
    kept = [[t for t in tx if t > 3] for tx in texts[:3]]
    assert json.loads(out.read_text())["tokens"] == sum(len(k) - 1 for k in kept)
