"""Settings shared by every test directory (core, plugins)."""

import os

from hypothesis import settings

# CI must not fail on a case Hypothesis happens to find that day: there, examples are derived
# from the test itself. Runs elsewhere keep exploring, which is how edge cases get found.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
