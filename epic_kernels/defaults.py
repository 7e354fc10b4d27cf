"""The defaults of ``generate``, ``sample_step``, ``epic-generate``, calibration and the Hugging Face
integration, in one place. The reasons are here; the measured figures behind them are in
README.md ("Why these defaults") and docs/benchmarks.md, with the commands that produced them.

* ``alpha = 0.2``: the largest value the paper reports across domains; ``epic-calibrate`` finds the
  value that matches a held-out text's entropy (``epic-generate --alpha auto``).
* ``horizon = 4``, ``rollouts = 2``: the paper's settings; with the Rao-Blackwellized estimator two
  rollouts already give low variance (python_tests/reference/test_estimators.py).
* ``top_k = 50`` candidate truncation and ``rollout_top_k = 50`` rollout policy (``generate``): the
  admissible window is ``|alpha| k log|supp pi|`` wide, so a top-50 policy (``log 50`` instead of
  ``log V``, V = 49,152 for the embedded model) shrinks it by a factor ``log 50 / log V``, and with
  it the survivors per step and the rows the model must run.
* ``max_rows = 256``: the most rows one model call of the fast engine carries, and the most
  candidates that keep their depth-1 logits (``[V]`` each) and slots beyond those that go deeper
  (docs/engine.md, "Bounded memory"). A step with more pending work makes more calls; the tokens
  do not depend on it. On the embedded model (V = 49,152) 256 rows of float32 logits are 50 MB, and
  the peak memory of a full-vocabulary step no longer grows with its survivors (measured with
  benchmarks/bench_memory.py in docs/engine.md, "Bounded memory"); top-50 steps at batch 1 do not
  reach the cap there, so their calls are unchanged.
* ``block_size = 32``: on a CPU a model call's cost grows far less than its rows (one call of 32
  rows costs a few single-row calls: the ``model_call`` table of docs/benchmarks.md), so refining
  more candidates per round (fewer rounds, fewer calls) wins; the tokens do not depend on it
  (the ``block_size`` suite of benchmarks/suites/bench_model.py, docs/benchmarks.md section 6).
"""
ALPHA = 0.2
HORIZON = 4
ROLLOUTS = 2
TOP_K = 50
ROLLOUT_TOP_K = 50
BLOCK_SIZE = 32
MAX_ROWS = 256
WARN_SURVIVORS = 4096   # sample_step, generate and epic-generate warn before a step with more survivors
