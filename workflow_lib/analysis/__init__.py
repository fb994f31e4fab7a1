"""Analyses across checkpoints and techniques: the tables and figures that answer the research questions."""

from workflow_lib.analysis import schemas  # noqa: E402,F401  (registers this part's tables)
