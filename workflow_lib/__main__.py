"""`python -m workflow_lib <stage> --job JSON [--settings JSON] [--threads N]`: run one stage.

Every rule makes this same call (rules/common.smk: `stage_call`); `snakemake -np` prints each job's, so a job
can be rerun by hand. The job JSON holds the rule's named `input`, `output`, `wildcards` and `params`
(workflow_lib/stages.py declares which); `--settings` is the rule's params.settings (the config subtree
the stage depends on, the runtime device and dtype, and its code digest); `--threads` sets torch's thread
count from the rule's `threads`. `python -m workflow_lib <stage> --help` shows a stage's declaration,
`python -m workflow_lib tables` prints every table's schema.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from workflow_lib.stages import STAGES, Stage, make_job

log = logging.getLogger("workflow_lib")

DEFAULT_SETTINGS = '{"config": {}, "runtime": {"device": "cpu", "dtype": "float32"}}'


def describe(stage: Stage) -> str:
    """A stage's declaration, for `--help`."""
    lines = [stage.doc, "", "The job JSON's names (x? optional, x_* a group of inputs named x_<key>):"]
    for kind, names in (("input", stage.inputs), ("output", stage.outputs), ("wildcards", stage.wildcards),
                        ("params", stage.params)):
        if names:
            lines.append(f"  {kind}: {', '.join(names)}")
    lines += ["", f"Code (its digest is in the rule's params): {', '.join(stage.modules)}",
              'Example: --job \'{"input": {...}, "output": {...}, "wildcards": {...}, "params": {...}}\'',
              "(`snakemake -np <target>` prints every job's exact call)"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workflow_lib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, stage in STAGES.items():
        p = sub.add_parser(name, help=stage.doc.splitlines()[0] if stage.doc else None, description=describe(stage),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--job", required=True, help="the rule's named input, output, wildcards and params (JSON)")
        p.add_argument("--settings", default=DEFAULT_SETTINGS, help="the rule's params.settings (JSON)")
        p.add_argument("--threads", type=int, default=1, help="torch threads (the rule's threads)")
    sub.add_parser("tables", help="print every table's schema as Markdown (docs/tables.md)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.stage == "tables":
        from workflow_lib.core import tables

        print(tables.schema_markdown())
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    stage = STAGES[args.stage]
    job = make_job(stage, json.loads(args.job), json.loads(args.settings))
    if stage.torch:
        from workflow_lib.core import models

        models.configure_threads(args.threads)
    start = time.time()
    stage.run(job)
    log.info("%s done in %.1f s", stage.name, time.time() - start)


if __name__ == "__main__":
    main()
