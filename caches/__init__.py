"""Feature caching (TaylorSeer-style) on diffusers' hooks; imports torch and diffusers hooks (through
``accel.hosts.diffusers_internals``) only, and wires its own hooks for a ModelSpec and config."""

from .adaptive import AdaptiveSchedule
from .install import cache_hooks, cache_schedule
from .taylorseer import CacheSchedule, LiteBlockHook, MemoryMeter, ProbeHook, TaylorLadder, TaylorSeerHook, TaylorState

__all__ = [
    "AdaptiveSchedule",
    "CacheSchedule",
    "LiteBlockHook",
    "MemoryMeter",
    "ProbeHook",
    "TaylorLadder",
    "TaylorSeerHook",
    "TaylorState",
    "cache_hooks",
    "cache_schedule",
]
