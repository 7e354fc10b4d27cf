"""The fast EPIC engine: fork attention over a shared prefix, slot-pool rollouts, the best-first
search over the candidate manager, reuse of the winner's forward, and prefetch of the next step.
Produces the reference sampler's tokens."""
from .attention import fork_attention, fork_mode, supports_fork
from .runtime import CallRows, ForkRuntime, Runtime, SlotPool
from .state import CandidateState
from .search import Search
from .step import FastStep, fast_sample

__all__ = ["fast_sample", "FastStep", "Search", "SlotPool", "Runtime", "ForkRuntime", "CallRows", "CandidateState", "fork_attention", "fork_mode", "supports_fork"]
