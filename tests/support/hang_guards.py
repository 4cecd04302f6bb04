"""How long a test may run before pytest-timeout calls it hung. A guard catches a hang, never a slow machine:
each is about ten times what the test takes on a quiet two-core machine, because `make test` also runs on
busy ones. Measured (CI's --durations): the micro quality module's two generations take 415 s quiet and
took over 900 s (the suite's default guard, pyproject.toml) at a load average of 14 on two cores, where
every other test of the suite passed."""

MICRO_GENERATION_S = 3600
"""A module that runs the whole chain on the micro priors (a few minutes on a quiet machine)."""
