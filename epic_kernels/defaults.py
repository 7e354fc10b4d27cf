"""The defaults of ``generate``, ``epic-generate`` and the Hugging Face integration, in one place.

Chosen from measurements on the embedded SmolLM2-135M-Instruct (docs/benchmarks.md, README):

* ``alpha = 0.2``: the largest value the paper reports across domains; ``epic-calibrate`` finds the
  value that matches a held-out text's entropy (``epic-generate --alpha auto``).
* ``horizon = 4``, ``rollouts = 2``: the paper's settings; with the RB estimator two rollouts
  already give low variance (python_tests/test_estimators.py: 0.10 against 1.66 for MC).
* ``top_k = 50`` candidate truncation and ``rollout_top_k = 50`` rollout policy: the admissible
  window is ``|alpha| k log|supp pi|`` wide, so a top-50 policy (log 50 = 3.9 instead of
  log 49152 = 10.8) cuts the survivors per step from ~82 to ~6 and the forward tokens per generated
  token from ~147 to ~18, which is what makes EPIC run at a useful fraction of plain sampling.
* ``block_size = 32``: on these machines a model call costs about the same for 1 or 30 rows, so
  refining more candidates per round (fewer rounds, fewer calls) wins: with top-50 truncation
  1.5 calls per token against 2.0 with blocks of 4 and 4.25 with blocks of 1, for the same tokens
  (benchmarks/bench_block_size.py, with prefetch).
"""
ALPHA = 0.2
HORIZON = 4
ROLLOUTS = 2
TOP_K = 50
ROLLOUT_TOP_K = 50
BLOCK_SIZE = 32
