"""The evidence experiments (exp_*.py), their data (data/) and the helper module every script of the
repository shares (common.py: also imported by benchmarks/). Application code, not part of the library."""
