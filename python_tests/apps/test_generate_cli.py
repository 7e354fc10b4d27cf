"""epic-generate (epic_kernels.cli.generate) end to end on the embedded SmolLM2-135M-Instruct (a few
tokens), and its argument errors: each a one-line message with exit code 2, before the model loads."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import epic_kernels.models as models
from epic_kernels.cli.generate import main, parse_args

ROOT = Path(__file__).resolve().parents[2]


def test_generate_end_to_end_with_baseline_and_plot(tmp_path, capsys):
    band = tmp_path / "band.jsonl"
    band.write_text("\n".join(json.dumps({"text": t}) for t in
                              ["The cat sat on the mat and looked at the rain.", "Two plus two is four."]))
    plot = tmp_path / "traj.png"
    code = main(["--max-new-tokens", "5", "--baseline", "top-p", "--plot", str(plot),
                 "--band-data", str(band), "--band-field", "text", "--prompt", "Say hello."])
    out = capsys.readouterr().out
    assert code == 0
    assert "--- EPIC ---" in out and "--- top-p 0.9" in out and "[summary]" in out
    epic_text = out.split("--- EPIC ---")[1].split("step  token")[0].strip()
    assert len(epic_text) > 0                                   # EPIC really generated text
    table = [line for line in out.splitlines() if line[:4].strip().isdigit()]
    assert 1 <= len(table) <= 5                                 # one row per generated token
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"        # a valid PNG
    assert plot.stat().st_size > 10_000


def test_json_record_of_the_hf_engine(tmp_path, capsys):
    path = tmp_path / "out.json"
    assert main(["--engine", "hf", "--max-new-tokens", "4", "--prompt", "Say hello.", "--quiet-steps",
                 "--json", str(path)]) == 0
    rec = json.loads(path.read_text())
    assert rec["engine"] == "hf" and len(rec["tokens"]) == 4 and len(rec["steps"]) == 4
    assert isinstance(rec["text"], str) and rec["summary"]["tokens"] == 4
    assert {"survivors", "forward_calls", "entropy"} <= set(rec["steps"][0])


def test_auto_engine_picks_llama_cpp_for_the_embedded_gguf_and_says_why(tmp_path, capsys):
    """``make run``'s engine: llama.cpp for the embedded GGUF here (llama-cpp-python is in the main env),
    announced on stderr, and its record is the llama.cpp engine's."""
    path = tmp_path / "out.json"
    assert main(["--max-new-tokens", "3", "--prompt", "Say hello.", "--quiet-steps", "--json", str(path)]) == 0
    err = capsys.readouterr().err
    assert "engine llama.cpp (--engine auto: a GGUF model on a CPU" in err, err
    assert json.loads(path.read_text())["engine"] == "llama.cpp"


@pytest.mark.parametrize("argv, patch, engine, why", [
    ([], None, "llama.cpp", "a GGUF model on a CPU"),
    (["--baseline", "top-p"], None, "hf", "--baseline and --band-data run the model through transformers"),
    (["--model", "{hf_dir}"], None, "hf", "the model is a Hugging Face folder"),
    ([], "no_llama", "hf", "llama-cpp-python is not installed (pip install 'epic_kernels[llama]'"),
    ([], "old_cpu", "hf", "this CPU lacks avx2, which the llama.cpp build needs"),
    ([], "cuda", "hf", "a CUDA device is present"),
    (["--engine", "hf"], None, "hf", None),
    (["--server", "http://127.0.0.1:9"], None, "vllm", None),
])
def test_auto_engine_rule(tmp_path, monkeypatch, argv, patch, engine, why):
    import torch

    import epic_kernels.llama.library as library
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    if patch == "no_llama":
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    elif patch == "old_cpu":
        monkeypatch.setattr(library, "missing_cpu_flags", lambda: ["avx2"])
    elif patch == "cuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = parse_args([a.format(hf_dir=hf_dir) for a in argv])
    assert args.engine == engine
    assert args.engine_reason == why or why in args.engine_reason


@pytest.mark.skipif(getattr(importlib.util.find_spec("vllm"), "origin", None) is not None,
                    reason="vllm is installed in this environment")
def test_vllm_engine_without_vllm_names_the_environment(capsys):
    code = _run(["--engine", "vllm", "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "make setup-vllm" in err and "Traceback" not in err, err


def no_model(*_, **__):
    raise AssertionError("the model must not load for a bad argument")


def _run(argv) -> int:
    """The exit code of ``main(argv)``, whether it returns or argparse exits."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


@pytest.mark.parametrize("argv,message", [
    (["--model", "/no/such/model"], "argument --model: '/no/such/model' does not exist"),
    (["--model", "{dir}"], "is not a model directory (no config.json and no .gguf file"),
    (["--model", "{dir_gguf}"], "is not a model directory (no config.json; to load a GGUF model, pass the file itself"),
    (["--model", "{txt}"], "is a file but not a .gguf model"),
    (["--alpha", "auto"], "--alpha auto needs --calibration"),
    (["--alpha", "auto", "--calibration", "/no/such.json"], "argument --calibration: file '/no/such.json' not found"),
    (["--alpha", "auto", "--calibration", "{not_a_record}"], "is not a calibration record"),
    (["--alpha", "hot"], "argument --alpha: expected a number, got 'hot'"),
    (["--alpha", "nan"], "argument --alpha: must be a finite number, got 'nan'"),
    (["--alpha", "inf"], "argument --alpha: must be a finite number, got 'inf'"),
    (["--seed", "-1"], "argument --seed: value must be in [0, 4294967295], got -1"),
    (["--seed", "4294967296"], "argument --seed: value must be in [0, 4294967295]"),
    (["--max-new-tokens", "-3"], "argument --max-new-tokens: value must be >= 0, got -3"),
    (["--horizon", "0"], "argument --horizon: value must be >= 1, got 0"),
    (["--horizon", "100"], "--horizon must be in [1, 64], got 100"),
    (["--rollouts", "two"], "argument --rollouts: expected an integer, got 'two'"),
    (["--block-size", "0"], "argument --block-size: value must be >= 1, got 0"),
    (["--plot", "out.jpg"], "argument --plot: writes a .png file; got 'out.jpg'"),
    (["--plot", "/no/such/dir/x.png"], "folder '/no/such/dir' does not exist"),
    (["--band-data", "{band}"], "--band-data sets the band of --plot's figure"),
    (["--plot", "{png}", "--band-data", "{band}", "--band-field", "nope"], "no field 'nope' (fields: text)"),
    (["--plot", "{png}", "--band-data", "/no/band.jsonl"], "argument --band-data: file '/no/band.jsonl' not found"),
    (["--json", "out.txt"], "argument --json: writes a .json file; got 'out.txt'"),
    (["--engine", "vllm", "--plot", "{png}"], "--plot needs the model's full next-token distribution"),
    (["--server", "http://127.0.0.1:9", "--baseline", "top-p"], "--baseline needs the model's full next-token"),
    (["--engine", "vllm", "--top-k", "0"], "full-vocabulary EPIC, which is out of scope on vLLM"),
    (["--engine", "vllm", "--model", "{gguf}"], "vLLM needs a Hugging Face model folder, not a .gguf file"),
    (["--engine", "tpu"], "argument --engine: invalid choice: 'tpu'"),
])
def test_bad_arguments_fail_before_the_model_loads(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setattr(models, "load_model", no_model)
    (tmp_path / "rec.json").write_text(json.dumps({"settings": {}}))
    (tmp_path / "band.jsonl").write_text(json.dumps({"text": "Some held-out text."}) + "\n")
    paths = {"{not_a_record}": str(tmp_path / "rec.json"), "{band}": str(tmp_path / "band.jsonl"),
             "{png}": str(tmp_path / "x.png"), "{gguf}": str(tmp_path / "m.gguf"),
             "{dir}": str(tmp_path / "empty"), "{dir_gguf}": str(tmp_path / "ggufs"), "{txt}": str(tmp_path / "rec.json")}
    (tmp_path / "m.gguf").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "ggufs").mkdir()
    (tmp_path / "ggufs" / "w.gguf").write_bytes(b"")
    code = _run([paths.get(a, a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err, err
    assert "Traceback" not in err


def test_calibrated_alpha_is_read_before_the_model_loads(tmp_path, capsys, monkeypatch):
    rec = tmp_path / "cal.json"
    rec.write_text(json.dumps({"alpha": 0.3, "settings": {"horizon": 2}}))
    monkeypatch.setattr(models, "load_model", no_model)
    with pytest.raises(AssertionError, match="must not load"):     # the arguments were accepted
        main(["--engine", "hf", "--alpha", "auto", "--calibration", str(rec)])
    assert "calibrated with horizon=2, decoding uses horizon=4" in capsys.readouterr().err


def test_plot_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name, *a))
    monkeypatch.setattr(models, "load_model", no_model)
    assert _run(["--plot", str(tmp_path / "x.png")]) == 2
    assert "--plot needs matplotlib, which is not installed: pip install 'epic_kernels[plot]'" in capsys.readouterr().err


@pytest.mark.parametrize("module,argv,message", [
    ("epic_kernels.cli.generate", ["--alpha", "nan"], "must be a finite number"),
    ("epic_kernels.cli.calibrate", ["--data", "x.jsonl", "--field", "t", "--out", "/missing/dir/x.json"],
     "folder '/missing/dir' does not exist"),
])
def test_errors_are_messages_not_tracebacks(module, argv, message):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and "loaded" not in proc.stderr
