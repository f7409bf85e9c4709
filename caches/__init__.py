"""Feature caching (TaylorSeer-style); see issue 4."""
