"""Behaviour at each checkpoint: greedy generations made once, refusal judged, jailbreak success rates."""

from workflow_lib.evaluation import schemas  # noqa: E402,F401  (registers this part's tables)
