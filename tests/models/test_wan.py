"""Wan on the shared per-family checks (tests/models/harness.py); Wan's own tests are in tests/integration."""

from tests.models.harness import family_tests

globals().update(family_tests("wan"))
