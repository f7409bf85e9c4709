"""Feature caching (TaylorSeer-style), host-neutral: ladders, memory meter, fixed and adaptive schedules. Imports
torch and ``accel``'s core only; the hosts (``accel.hosts.diffusers_cache``, ``accel.hosts.comfy``) drive it."""

from .adaptive import AdaptiveSchedule, cache_schedule
from .taylorseer import CacheSchedule, MemoryMeter, TaylorLadder

__all__ = ["AdaptiveSchedule", "CacheSchedule", "MemoryMeter", "TaylorLadder", "cache_schedule"]
