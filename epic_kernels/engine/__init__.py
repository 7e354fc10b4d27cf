"""The fast EPIC engine: fork attention over a shared prefix, slot-pool rollouts, the candidate-block
manager, and reuse of the winner's forward. Produces the reference sampler's tokens."""
from .attention import SlotPool, fork_attention, fork_mode, supports_fork
from .cache import PrefixCache, PrefixView
from .step import FastStep, fast_sample

__all__ = ["fast_sample", "FastStep", "PrefixCache", "PrefixView", "SlotPool", "fork_attention",
           "fork_mode", "supports_fork"]
