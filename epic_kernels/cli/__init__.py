"""The command-line tools: ``epic-generate`` (``epic_kernels.cli.generate``) and ``epic-calibrate``
(``epic_kernels.cli.calibrate``). Both check every argument before the model loads."""
