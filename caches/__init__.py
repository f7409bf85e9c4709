"""Feature caching (TaylorSeer-style) on diffusers' hooks; imports torch and diffusers hooks only."""

from .taylorseer import CacheSchedule, LiteBlockHook, MemoryMeter, TaylorLadder, TaylorSeerHook, TaylorState

__all__ = ["CacheSchedule", "LiteBlockHook", "MemoryMeter", "TaylorLadder", "TaylorSeerHook", "TaylorState"]
