"""Optional dependencies stay optional: the library imports none of them, a missing one is an error
naming the extra that installs it, and setup.py asks for torch and transformers only."""
import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import epic_kernels.models as models
from epic_kernels.extras import MissingDependency, check_installed, require

ROOT = Path(__file__).resolve().parents[2]
OPTIONAL = ("matplotlib", "sacrebleu", "gguf", "accelerate")


def test_importing_the_library_and_its_tools_pulls_no_optional_dependency():
    code = ("import sys, epic_kernels, epic_kernels.models, epic_kernels.hf, epic_kernels.cli.generate, "
            "epic_kernels.cli.calibrate\n"
            f"print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True,
                          env=env)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def _hide(monkeypatch, *names):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in names else find_spec(name, *a))


@pytest.mark.parametrize("hidden,missing", [(("gguf",), "gguf, which is"),
                                            (("gguf", "accelerate"), "gguf and accelerate, which are")])
def test_a_gguf_model_without_the_extra_names_it(tmp_path, monkeypatch, hidden, missing):
    _hide(monkeypatch, *hidden)
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(MissingDependency, match=rf"loading the GGUF model model.gguf needs {missing} not "
                                                rf"installed: pip install 'epic_kernels\[gguf\]'"):
        models.load_model(path)


def test_require_imports_or_names_the_extra(monkeypatch):
    assert require("json", "plot", "x").dumps([1]) == "[1]"
    check_installed("json", "os.path", extra="plot", purpose="x")
    with pytest.raises(MissingDependency, match=r"Self-BLEU needs no_such_module_xyz, which is not installed: "
                                                r"pip install 'epic_kernels\[experiments\]'"):
        require("no_such_module_xyz.metrics", "experiments", "Self-BLEU")
    assert issubclass(MissingDependency, ImportError)


def test_setup_requires_torch_and_transformers_only():
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    requires = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "install_requires"))
    names = {r.split(">")[0].split("=")[0].split(";")[0].strip() for r in requires}
    # tqdm is one of transformers' own requirements (calibrate_alpha's progress bar): it adds nothing
    assert names == {"torch", "transformers", "tqdm"}
    scripts = next(k.value for k in call.keywords if k.arg == "entry_points")
    assert "epic_kernels.cli.generate:main" in ast.unparse(scripts)
    assert "epic_kernels.cli.calibrate:main" in ast.unparse(scripts)
