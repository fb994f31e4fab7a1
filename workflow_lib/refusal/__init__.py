"""The refusal direction (Arditi et al. 2024): extraction, interventions, drift and component alignment."""

from workflow_lib.refusal import schemas  # noqa: E402,F401  (registers this part's tables)
