"""Temporary folders and files a SIGKILLed job leaves are removed by the next attempt at the same output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from workflow_lib.core import scratch, tables

KILLED = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from workflow_lib.core import scratch, tables
scratch.fresh_folder({owner!r})
tables.atomic_target({table!r})
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_next_attempt_removes_what_a_killed_one_left(tmp_path):
    owner, table = tmp_path / "checkpoint", tmp_path / "llc.parquet"
    neighbour = tmp_path / ".other.parquet.abc.tmp"  # another output's temporary file: not ours to remove
    neighbour.write_text("x")
    killed = subprocess.run([sys.executable, "-c", KILLED.format(repo=str(REPO), owner=str(owner), table=str(table))])
    assert killed.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir())
    assert any(n.startswith(".checkpoint.tmp-") for n in left) and any(n.startswith(".llc.parquet.") for n in left)

    with scratch.folder(owner) as mine:
        assert mine.name == f".checkpoint.tmp-{os.getpid()}" and mine.is_dir()
        assert [p.name for p in tmp_path.glob(".checkpoint.tmp-*")] == [mine.name]
    final, tmp = tables.atomic_target(table)
    assert [p.name for p in tmp_path.glob(".llc.parquet.*")] == [tmp.name]  # the killed one's is gone
    tmp.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == [neighbour.name]


def test_a_folder_is_removed_when_its_block_fails(tmp_path):
    owner = tmp_path / "llc.parquet"
    try:
        with scratch.folder_beside(owner, "sgld") as path:
            (path / "samples.zarr").mkdir()
            raise RuntimeError("sampler failed")
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []
    with scratch.folder_beside(None, "sgld") as path:  # no output to sit beside: the system's temporary folder
        assert Path(path).is_dir() and Path(path).parent != tmp_path
