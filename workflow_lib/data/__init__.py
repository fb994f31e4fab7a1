"""Inputs of every trajectory: prompt sets, jailbreak templates, the base model's completions, and the
project's own data files (harmless instructions, the embedded model's config)."""

from workflow_lib.data import schemas  # noqa: E402,F401  (registers this part's tables)
