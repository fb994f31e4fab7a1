"""Singular learning theory at each checkpoint: the LLC (SGLD through devinterp) and susceptibilities."""

from workflow_lib.slt import schemas  # noqa: E402,F401  (registers this part's tables)
