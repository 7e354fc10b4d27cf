"""epic-generate end to end on the embedded SmolLM2-135M-Instruct (a few tokens), and its errors."""
import json
import subprocess
import sys

import pytest

from epic_kernels.cli import generate_main


def test_generate_end_to_end_with_baseline_and_plot(tmp_path, capsys):
    band = tmp_path / "band.jsonl"
    band.write_text("\n".join(json.dumps({"text": t}) for t in
                              ["The cat sat on the mat and looked at the rain.", "Two plus two is four."]))
    plot = tmp_path / "traj.png"
    code = generate_main(["--max-new-tokens", "5", "--baseline", "top-p", "--plot", str(plot),
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


@pytest.mark.parametrize("argv,message", [
    (["--model", "/no/such/model"], "does not exist"),
    (["--alpha", "auto"], "--alpha auto needs --calibration"),
    (["--alpha", "auto", "--calibration", "/no/such.json"], "does not exist"),
    (["--alpha", "hot"], "must be a number"),
    (["--max-new-tokens", "-3"], "--max-new-tokens must be >= 0"),
    (["--plot", "out.jpg"], "PNG"),
])
def test_errors_are_messages_not_tracebacks(argv, message):
    proc = subprocess.run([sys.executable, "-m", "epic_kernels.cli", *argv], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
