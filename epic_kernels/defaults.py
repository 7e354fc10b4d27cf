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
* ``block_size = 32``: on a CPU a model call costs about the same for 1 or 30 rows, so refining more
  candidates per round (fewer rounds, fewer calls) wins; the tokens do not depend on it
  (benchmarks/bench_block_size.py).
"""
ALPHA = 0.2
HORIZON = 4
ROLLOUTS = 2
TOP_K = 50
ROLLOUT_TOP_K = 50
BLOCK_SIZE = 32
