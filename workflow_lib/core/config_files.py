"""Parse the config files a run will read, before Snakemake does, so a YAML error names its file and line.

Snakemake's own message for a malformed config file ("Config file is not valid JSON
or YAML") names neither (issue 20). `bin/run-default` calls this first:

    python -m workflow_lib.core.config_files config/config.yaml [snakemake arguments ...]

It reads the files named by `--configfile`/`--configfiles` among the arguments, plus
the default, and exits 1 with `file:line:column: problem` on the first bad one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def named_files(default: str, arguments: list[str]) -> list[str]:
    """The default config file and every file given to --configfile(s), in the order Snakemake merges them."""
    files, taking = [default], False
    for arg in arguments:
        if arg.startswith("--configfile=") or arg.startswith("--configfiles="):
            files.append(arg.split("=", 1)[1])
            taking = False
        elif arg in ("--configfile", "--configfiles"):
            taking = True
        elif taking and not arg.startswith("-"):
            files.append(arg)
        else:
            taking = False
    return files


def problem(path: str) -> str | None:
    """`file:line:column: what is wrong`, or None when the file parses to a mapping."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        return f"{path}: cannot read the config file ({err.strerror})"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        what = getattr(err, "problem", None) or str(err)
        context = getattr(err, "context", None)
        return (f"{where}: {what}" + (f" ({context})" if context else "")
                + "; YAML nests by indentation with spaces: check this line against the one above")
    if data is not None and not isinstance(data, dict):
        return f"{path}: a config file holds a mapping of keys (e.g. `jailbreak: {{...}}`), not a {type(data).__name__}"
    return None


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for path in named_files(argv[0], argv[1:]):
        if (message := problem(path)) is not None:
            print(f"Invalid config file: {message}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
