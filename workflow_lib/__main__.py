"""`python -m workflow_lib <stage> ...`: one subcommand per Snakemake rule.

Every stage gets `--settings`, the JSON its rule carries in `params` (the config
subtree it depends on, the runtime device and dtype, and the code digest that
makes Snakemake rerun it when its modules change), and `--threads`, which sets
torch's thread count from the rule's `threads`. Heavy modules are imported
inside each command so that `--help` and light stages start fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

log = logging.getLogger("workflow_lib")

# Stages that run a model: torch's thread count is set from the rule's `threads` before they start.
TORCH_STAGES = {"prepare_model", "base_completions", "training_mix", "finetune_segment", "generate", "refusal_eval",
                "llc", "llc_calibrate", "susceptibility", "susceptibility_linear", "refusal_direction",
                "refusal_interventions", "jailbreak", "component_alignment"}


def _pairs(values: list[str]) -> dict[str, str]:
    """`name=path` arguments as an ordered dict."""
    out = {}
    for value in values:
        name, _, path = value.partition("=")
        if not path:
            raise SystemExit(f"expected NAME=PATH, got {value!r}")
        out[name] = path
    return out


def _shared(a, outputs: dict[str, tuple[str, str | None]]) -> bool:
    """True when `--same-as` names a checkpoint that is this one's model, whose outputs were copied."""
    if not a.same_as:
        return False
    from workflow_lib import shared_checkpoints

    return shared_checkpoints.reuse(checkpoint_dir=a.checkpoint, source=_pairs(a.same_as), outputs=outputs,
                                    technique=a.technique, step=a.step)


def cmd_prepare_model(a, s):
    from workflow_lib import models

    facts = models.prepare_model(a.name, s["config"], a.out, a.cache)
    log.info("prepared %s", facts)


def cmd_prepare_prompts(a, s):
    from workflow_lib import prompts

    built = prompts.prepare_prompts(settings=s["config"], out_paths=_pairs(a.out), cache_dir=a.cache)
    for name, df in built.items():
        log.info("%s: %s", name, df.group_by("split").len().sort("split").rows())


def cmd_base_completions(a, s):
    from workflow_lib import completions

    table = completions.base_completions(model=a.model, model_dir=a.model_dir, prompt_paths=a.prompts,
                                         settings=s["config"], out_path=a.out, **s["runtime"])
    log.info("%d completions, %d truncated", table.height, table["truncated"].sum())


def cmd_training_mix(a, s):
    from workflow_lib.finetune import loop

    mix = loop.write_training_mix(technique=a.technique, settings=s["config"], prompt_paths=_pairs(a.prompts),
                                  completions_path=a.completions, out_path=a.out)
    log.info("training mix: %s", mix.group_by("kind").len().sort("kind").rows())


def cmd_finetune_segment(a, s):
    from workflow_lib.finetune import loop

    row = loop.run_segment(model=a.model, technique=a.technique, settings=s["config"], model_dir=a.model_dir,
                           mix_path=a.mix, prev_dir=a.prev, prev_step=a.prev_step, step=a.step, out_dir=a.out,
                           device=s["runtime"]["device"], start_dir=a.start,
                           reference_dir=a.reference, direction_path=a.direction)
    log.info("checkpoint: %s", row.to_dicts()[0])


def cmd_manifest(a, s):
    from workflow_lib.finetune import loop

    loop.collect_manifest(a.checkpoints, a.out)


def cmd_generate(a, s):
    import polars as pl

    from workflow_lib import generation_store

    shared = _pairs(a.same_as) if a.same_as else {}
    table = generation_store.run(
        kind=a.kind, model=a.model, technique=a.technique, step=a.step, model_dir=a.model_dir,
        checkpoint_dir=a.checkpoint, prompt_paths=_pairs(a.prompts), templates_path=a.templates, settings=s["config"],
        code=s["code"], runtime=s["runtime"], out_path=a.out, direction_path=a.direction,
        final_direction_path=a.final_direction, final_step=a.final_step,
        shared_checkpoint=shared.get("checkpoint"), shared_generations=shared.get("generations"), **s["runtime"])
    log.info("%s generations (prompt set, wrapper, hook, direction, rows, tokens): %s", a.kind,
             table.group_by("prompt_set", "wrapper", "hook", "direction_source", maintain_order=True)
             .agg(pl.len(), pl.col("max_new_tokens").max()).rows())


def cmd_refusal_eval(a, s):
    from workflow_lib import refusal_eval

    table = refusal_eval.refusal_eval(model=a.model, technique=a.technique, step=a.step, model_dir=a.model_dir,
                                      prompt_paths=_pairs(a.prompts), generations_path=a.generations,
                                      settings=s["config"], out_path=a.out, judged_path=a.judged)
    log.info("refusal: %s", table.select("prompt_set", "refusal_rate", "refusal_score_logodds", "n").rows())


def cmd_summary(a, s):
    from workflow_lib import summary

    summary.trajectory(manifest_paths=a.manifests, refusal_eval_paths=a.refusal_evals, out_path=a.out)


def cmd_plot_refusal(a, s):
    from workflow_lib import plots

    plots.refusal_trajectory(a.trajectory, a.out)


def cmd_llc(a, s):
    from workflow_lib import llc

    if _shared(a, {"table": (a.out, "llc"), "trace": (a.trace, "llc_trace")}):
        return
    table = llc.run_llc(model=a.model, technique=a.technique, step=a.step, model_dir=a.model_dir,
                        checkpoint_dir=a.checkpoint, space=a.space, dataset=a.dataset, mix_path=a.mix,
                        completions_path=a.completions, settings=s["config"], out_path=a.out,
                        trace_path=a.trace, **s["runtime"])
    log.info("llc: %s", table.select("row", "chain", "llc_mean", "llc_std", "status", "reason").rows())


def cmd_llc_calibrate(a, s):
    from workflow_lib import llc_calibration, plots

    grid = llc_calibration.calibrate(model=a.model, technique=a.technique, step=a.step, model_dir=a.model_dir,
                                     checkpoint_dir=a.checkpoint, mix_path=a.mix, completions_path=a.completions,
                                     settings=s["config"], out_path=a.out, trace_path=a.trace, **s["runtime"])
    log.info("calibration: %s", grid.select("lr", "n_beta", "llc_mean", "status", "recommended").rows())
    plots.llc_calibration(a.trace, a.out, a.plot)


def cmd_llc_summary(a, s):
    from workflow_lib import summary

    summary.llc_table(llc_paths=a.llc, out_path=a.out)


def cmd_job_costs(a, s):
    from workflow_lib import job_costs

    stages = job_costs.write_job_costs(paths=a.benchmarks, root=a.root, stage_of=s["config"]["stage_of"],
                                       jobs_out=a.out, stages_out=a.stages_out, plot_out=a.plot)
    log.info("job costs by stage:\n%s", stages)


def cmd_llc_differences(a, s):
    from workflow_lib import llc_differences

    table = llc_differences.write_differences(llc_paths=a.llc, trace_paths=a.traces,
                                              n_beta=float(s["config"]["n_beta"]), out_path=a.out)
    log.info("llc differences: %d rows, %d resolved", table.height, int(table["resolved"].sum()))


def cmd_plot_llc(a, s):
    from workflow_lib import plots

    plots.llc_trajectory(a.llc, a.trajectory_out, a.differences)
    plots.llc_traces(a.traces, a.traces_out)


def cmd_prepare_jailbreak_templates(a, s):
    from workflow_lib import jailbreak_templates

    table = jailbreak_templates.prepare_templates(cache_dir=a.cache, out_path=a.out)
    log.info("%d jailbreak templates", table.height)


def cmd_susceptibility(a, s):
    from workflow_lib import susceptibility

    table = susceptibility.run_susceptibility(
        model=a.model, technique=a.technique, step=a.step, model_dir=a.model_dir, checkpoint_dir=a.checkpoint,
        mix_path=a.mix, prompt_paths=_pairs(a.prompts), completions_path=a.completions, templates_path=a.templates,
        settings=s["config"], tokens_out=a.tokens_out, table_out=a.out, reliability_out=a.reliability_out,
        **s["runtime"])
    log.info("susceptibility: %s", table.select("component", "observable", "chi_mean", "status").rows())


def cmd_susceptibility_linear(a, s):
    from workflow_lib import susceptibility_linear_stage

    table = susceptibility_linear_stage.run_linear_susceptibility(
        model=a.model, technique=a.technique, step=a.step, model_dir=a.model_dir, checkpoint_dir=a.checkpoint,
        mix_path=a.mix, prompt_paths=_pairs(a.prompts), completions_path=a.completions, templates_path=a.templates,
        settings=s["config"], sequences_out=a.sequences_out, tokens_out=a.tokens_out, table_out=a.out,
        device=s["runtime"]["device"])
    log.info("linear-response susceptibility: %d rows, largest |chi_mean| %.3g", table.height,
             table["chi_mean"].abs().max())


def cmd_susceptibility_reliability(a, s):
    from workflow_lib import susceptibility_linear_stage

    table = susceptibility_linear_stage.write_reliability(sequences_path=a.sequences, settings=s["config"],
                                                          out_path=a.out)
    log.info("reliability: %s", table.select("component_kind", "name", "source", "reliability").rows())


def cmd_susceptibility_structure(a, s):
    from workflow_lib import susceptibility_structure

    rows = susceptibility_structure.write_structure(tokens_path=a.tokens, table_path=a.table, settings=s["config"],
                                                    out_path=a.out, sequences_path=a.sequences)
    log.info("structure: %s", rows.filter(rows["quantity"] == "explained_variance_ratio")
             .select("pc", "value").rows())


def cmd_susceptibility_summary(a, s):
    from workflow_lib import summary

    summary.susceptibility_tables(table_paths=a.tables, structure_paths=a.structures, out_path=a.out,
                                  structure_out=a.structure_out)


def cmd_susceptibility_reliability_summary(a, s):
    from workflow_lib import summary

    summary.susceptibility_reliability_table(table_paths=a.tables, out_path=a.out)


def cmd_plot_susceptibility(a, s):
    from workflow_lib import plots

    estimator = s["config"].get("estimator")
    plots.susceptibility_heatmaps(a.table, a.heatmaps_out, estimator)
    plots.susceptibility_contrasts(a.structure, a.contrasts_out, estimator)
    plots.susceptibility_reliability(a.reliability, a.reliability_out)


def cmd_susceptibility_seed_check(a, s):
    from workflow_lib import susceptibility_structure

    table = susceptibility_structure.seed_agreement(a.tables, s["config"]["observable"], s["config"]["contrasts"],
                                                    a.out)
    log.info("seed agreement: %s", table.rows())


def cmd_refusal_direction(a, s):
    from workflow_lib import refusal_direction

    if _shared(a, {"candidates": (a.candidates_out, "refusal_candidates"), "direction": (a.direction_out, None),
                   "table": (a.out, "refusal_direction")}):
        return
    settings = s["config"]
    summary = refusal_direction.extract(
        model=a.model, technique=a.technique, step=a.step, model_dir=a.model_dir, checkpoint_dir=a.checkpoint,
        prompt_paths=_pairs(a.prompts), settings=settings, refusal_phrases=settings["refusal_start_phrases"],
        candidates_out=a.candidates_out, direction_out=a.direction_out, summary_out=a.out, **s["runtime"])
    log.info("refusal direction: %s", summary)


def cmd_refusal_interventions(a, s):
    from workflow_lib import refusal_interventions

    table = refusal_interventions.run_interventions(
        model=a.model, technique=a.technique, step=a.step, model_dir=a.model_dir, direction_path=a.direction,
        prompt_paths=_pairs(a.prompts), generations_paths=a.generations, settings=s["config"], out_path=a.out)
    log.info("interventions: %s", table.select("condition", "prompt_set", "refusal_rate", "refusal_score_logodds",
                                               "distinct_token_ratio", "status").rows())


def cmd_refusal_drift(a, s):
    from workflow_lib import refusal_drift

    refusal_drift.drift(model=a.model, technique=a.technique, steps=a.steps, direction_paths=a.directions,
                        base_path=a.base, out_path=a.out)


def cmd_refusal_direction_summary(a, s):
    from workflow_lib import summary

    summary.refusal_direction_tables(direction_paths=a.directions, intervention_paths=a.interventions,
                                     drift_paths=a.drifts, out_path=a.out, interventions_out=a.interventions_out,
                                     drift_out=a.drift_out)


def cmd_plot_refusal_direction(a, s):
    from workflow_lib import plots

    plots.refusal_interventions(a.directions, a.interventions, a.out)


def cmd_prepare_attacks(a, s):
    from workflow_lib import jailbreak_templates

    table = jailbreak_templates.prepare_attacks(cache_dir=a.cache, model_dir=a.model_dir, out_path=a.out)
    log.info("%d attack templates: %s", table.height, table.group_by("family").len().sort("family").rows())


def cmd_jailbreak(a, s):
    from workflow_lib import jailbreak

    table = jailbreak.run_jailbreak(
        model=a.model, technique=a.technique, step=a.step, model_dir=a.model_dir, prompt_paths=_pairs(a.prompts),
        templates_path=a.templates, generations_paths=a.generations, settings=s["config"], out_path=a.out,
        generations_path=a.judged, **s["runtime"])
    log.info("jailbreak: %s", table.filter(table["category"] == "all").select(
        "prompt_set", "attack", "judge", "asr", "n", "status").rows())


def cmd_jailbreak_summary(a, s):
    from workflow_lib import summary

    summary.jailbreak_table(table_paths=a.tables, out_path=a.out)


def cmd_plot_jailbreak(a, s):
    from workflow_lib import plots

    plots.jailbreak_asr(a.table, a.out)


def cmd_trajectories(a, s):
    from workflow_lib import analysis

    table = analysis.trajectories(refusal_path=a.refusal, llc_path=a.llc,
                                  llc_differences_path=a.llc_differences, jailbreak_path=a.jailbreak,
                                  directions_path=a.directions, drift_path=a.drift, out_path=a.out)
    log.info("trajectories: %d rows, status counts %s", table.height, table.group_by("status").len().rows())


def cmd_llc_asr_correlation(a, s):
    from workflow_lib import analysis

    table = analysis.llc_asr_correlation(trajectories_path=a.trajectories, settings=s["config"], out_path=a.out)
    log.info("pooled spearman: %s", table.filter((table["technique"] == "pooled") & (table["method"] == "spearman"))
             .select("llc_measure", "attack", "judge", "estimate", "ci_low", "ci_high", "p_value", "status").rows())


def cmd_direction_emergence(a, s):
    from workflow_lib import analysis

    table = analysis.direction_emergence(directions_path=a.directions, out_path=a.out)
    log.info("emergence: %s", table.select("technique", "emergence_step", "layer", "status").rows())


def cmd_technique_comparison(a, s):
    from workflow_lib import analysis

    table = analysis.technique_comparison(trajectories_path=a.trajectories, settings=s["config"], out_path=a.out)
    log.info("comparison: %s", table.rows())


def cmd_component_alignment(a, s):
    from workflow_lib import component_alignment

    if _shared(a, {"table": (a.out, "component_alignment")}):
        return
    table = component_alignment.run(model=a.model, technique=a.technique, step=a.step, model_dir=a.model_dir,
                                    checkpoint_dir=a.checkpoint, direction_path=a.direction, out_path=a.out,
                                    device=s["runtime"]["device"])
    log.info("alignment: %s", table.filter(table["component_kind"].is_in(["attn", "mlp"]))
             .sort("alignment_ratio", descending=True, nulls_last=True).head(5)
             .select("component", "alignment_ratio", "status").rows())


def cmd_susceptibility_alignment(a, s):
    from workflow_lib import susceptibility_alignment

    susceptibility_alignment.run(alignment_paths=a.alignments, susceptibility_path=a.susceptibility,
                                 structure_path=a.structure, settings=s["config"], alignment_out=a.alignment_out,
                                 correlation_out=a.out, rotation_out=a.rotation_out)


def cmd_plot_trajectories(a, s):
    from workflow_lib import analysis_plots

    analysis_plots.trajectories(a.trajectories, a.out, judge=s["config"]["judge"])


def cmd_plot_llc_vs_asr(a, s):
    from workflow_lib import analysis_plots

    analysis_plots.llc_vs_asr(a.trajectories, a.correlation, a.out, judge=s["config"]["judge"])


def cmd_plot_drift(a, s):
    from workflow_lib import analysis_plots

    analysis_plots.drift(a.drift, a.directions, a.emergence, a.technique, a.out)


def cmd_plot_component_alignment(a, s):
    from workflow_lib import analysis_plots

    analysis_plots.alignment(a.alignment, a.correlation, a.rotation, a.out)


def cmd_plot_technique_comparison(a, s):
    from workflow_lib import analysis_plots

    analysis_plots.technique_comparison(a.comparison, a.out)


def cmd_tables(a, s):
    from workflow_lib import tables

    print(tables.schema_markdown())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workflow_lib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)

    def stage(name, func, *args):
        p = sub.add_parser(name)
        p.add_argument("--settings", default='{"config": {}, "runtime": {"device": "cpu", "dtype": "float32"}}')
        p.add_argument("--threads", type=int, default=1)
        for flags, kwargs in args:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(func=func)

    req = {"required": True}
    many = {"required": True, "nargs": "+"}
    stage("prepare_model", cmd_prepare_model, (["--name"], req), (["--out"], req), (["--cache"], req))
    stage("prepare_prompts", cmd_prepare_prompts, (["--out"], many), (["--cache"], req))
    stage("base_completions", cmd_base_completions, (["--model"], req), (["--model-dir"], req),
          (["--prompts"], many), (["--out"], req))
    stage("training_mix", cmd_training_mix, (["--technique"], req), (["--prompts"], many),
          (["--completions"], req), (["--out"], req))
    stage("finetune_segment", cmd_finetune_segment, (["--model"], req), (["--technique"], req),
          (["--model-dir"], req), (["--mix"], req), (["--prev"], {"default": None}),
          (["--prev-step"], {"type": int, "default": None}), (["--start"], {"default": None}),
          (["--reference"], {"default": None}), (["--direction"], {"default": None}),
          (["--step"], {"type": int, "required": True}),
          (["--out"], req))
    stage("manifest", cmd_manifest, (["--checkpoints"], many), (["--out"], req))
    # NAME=PATH of a checkpoint that may be this one's model (`checkpoint=`) and its outputs by name
    same_as = (["--same-as"], {"nargs": "+", "default": None})
    checkpoint_args = ((["--model"], req), (["--technique"], req), (["--step"], {"type": int, "required": True}),
                       (["--model-dir"], req), (["--checkpoint"], req))
    # judging stages read the checkpoint's generations, not its weights
    judge_args = ((["--model"], req), (["--technique"], req), (["--step"], {"type": int, "required": True}),
                  (["--model-dir"], req))
    stage("generate", cmd_generate, *checkpoint_args, (["--kind"], {"required": True, "choices": ["plain", "directed"]}),
          (["--prompts"], many), (["--templates"], {"default": None}), (["--direction"], {"default": None}),
          (["--final-direction"], {"default": None}), (["--final-step"], {"type": int, "default": None}),
          (["--out"], req), same_as)
    stage("refusal_eval", cmd_refusal_eval, *judge_args, (["--prompts"], many), (["--generations"], req),
          (["--out"], req), (["--judged"], req))
    stage("llc", cmd_llc, *checkpoint_args, (["--space"], req), (["--dataset"], req),
          (["--mix"], {"default": None}), (["--completions"], req), (["--out"], req), (["--trace"], req), same_as)
    stage("llc_differences", cmd_llc_differences, (["--llc"], many), (["--traces"], many), (["--out"], req))
    stage("llc_calibrate", cmd_llc_calibrate, *checkpoint_args, (["--mix"], {"default": None}),
          (["--completions"], req), (["--out"], req), (["--trace"], req), (["--plot"], req))
    stage("job_costs", cmd_job_costs, (["--benchmarks"], {"nargs": "*", "default": []}), (["--root"], req),
          (["--out"], req), (["--stages-out"], req), (["--plot"], req))
    stage("llc_summary", cmd_llc_summary, (["--llc"], many), (["--out"], req))
    stage("plot_llc", cmd_plot_llc, (["--llc"], req), (["--traces"], many), (["--differences"], {"default": None}),
          (["--trajectory-out"], req),
          (["--traces-out"], req))
    stage("prepare_jailbreak_templates", cmd_prepare_jailbreak_templates, (["--cache"], req), (["--out"], req))
    stage("susceptibility", cmd_susceptibility, *checkpoint_args, (["--prompts"], many),
          (["--templates"], {"default": None}), (["--mix"], {"default": None}), (["--completions"], req),
          (["--tokens-out"], req), (["--reliability-out"], {"default": None}), (["--out"], req))
    stage("susceptibility_linear", cmd_susceptibility_linear, *checkpoint_args, (["--prompts"], many),
          (["--templates"], {"default": None}), (["--mix"], {"default": None}), (["--completions"], req),
          (["--sequences-out"], req), (["--tokens-out"], req), (["--out"], req))
    stage("susceptibility_reliability", cmd_susceptibility_reliability, (["--sequences"], req), (["--out"], req))
    stage("susceptibility_structure", cmd_susceptibility_structure, (["--tokens"], {"default": None}),
          (["--sequences"], {"default": None}), (["--table"], req), (["--out"], req))
    stage("susceptibility_summary", cmd_susceptibility_summary, (["--tables"], many), (["--structures"], many),
          (["--out"], req), (["--structure-out"], req))
    stage("susceptibility_reliability_summary", cmd_susceptibility_reliability_summary, (["--tables"], many),
          (["--out"], req))
    stage("plot_susceptibility", cmd_plot_susceptibility, (["--table"], req), (["--structure"], req),
          (["--reliability"], req), (["--heatmaps-out"], req), (["--contrasts-out"], req),
          (["--reliability-out"], req))
    stage("susceptibility_seed_check", cmd_susceptibility_seed_check, (["--tables"], many), (["--out"], req))
    stage("refusal_direction", cmd_refusal_direction, *checkpoint_args, (["--prompts"], many),
          (["--candidates-out"], req), (["--direction-out"], req), (["--out"], req), same_as)
    stage("refusal_interventions", cmd_refusal_interventions, *judge_args, (["--direction"], req),
          (["--prompts"], many), (["--generations"], many), (["--out"], req))
    stage("refusal_drift", cmd_refusal_drift, (["--model"], req), (["--technique"], req),
          (["--steps"], {"required": True, "nargs": "+", "type": int}), (["--directions"], many), (["--base"], req),
          (["--out"], req))
    stage("refusal_direction_summary", cmd_refusal_direction_summary, (["--directions"], many),
          (["--interventions"], many), (["--drifts"], many), (["--out"], req), (["--interventions-out"], req),
          (["--drift-out"], req))
    stage("plot_refusal_direction", cmd_plot_refusal_direction, (["--directions"], req), (["--interventions"], req),
          (["--out"], req))
    stage("prepare_attacks", cmd_prepare_attacks, (["--cache"], req), (["--model-dir"], req), (["--out"], req))
    stage("jailbreak", cmd_jailbreak, *judge_args, (["--prompts"], many), (["--templates"], req),
          (["--generations"], many), (["--out"], req), (["--judged"], req))
    stage("jailbreak_summary", cmd_jailbreak_summary, (["--tables"], many), (["--out"], req))
    stage("plot_jailbreak", cmd_plot_jailbreak, (["--table"], req), (["--out"], req))
    stage("summary", cmd_summary, (["--manifests"], many), (["--refusal-evals"], many), (["--out"], req))
    stage("plot_refusal", cmd_plot_refusal, (["--trajectory"], req), (["--out"], req))
    optional = {"default": None}
    stage("trajectories", cmd_trajectories, (["--refusal"], req), (["--llc"], optional), (["--llc-differences"], optional),
          (["--jailbreak"], optional), (["--directions"], optional), (["--drift"], optional), (["--out"], req))
    stage("llc_asr_correlation", cmd_llc_asr_correlation, (["--trajectories"], req), (["--out"], req))
    stage("direction_emergence", cmd_direction_emergence, (["--directions"], req), (["--out"], req))
    stage("technique_comparison", cmd_technique_comparison, (["--trajectories"], req), (["--out"], req))
    stage("component_alignment", cmd_component_alignment, *checkpoint_args, (["--direction"], req),
          (["--out"], req), same_as)
    stage("susceptibility_alignment", cmd_susceptibility_alignment, (["--alignments"], many),
          (["--susceptibility"], optional), (["--structure"], optional), (["--alignment-out"], req),
          (["--out"], req), (["--rotation-out"], req))
    stage("plot_trajectories", cmd_plot_trajectories, (["--trajectories"], req), (["--out"], req))
    stage("plot_llc_vs_asr", cmd_plot_llc_vs_asr, (["--trajectories"], req), (["--correlation"], req),
          (["--out"], req))
    stage("plot_drift", cmd_plot_drift, (["--drift"], req), (["--directions"], req), (["--emergence"], req),
          (["--technique"], req), (["--out"], req))
    stage("plot_component_alignment", cmd_plot_component_alignment, (["--alignment"], req),
          (["--correlation"], req), (["--rotation"], req), (["--out"], req))
    stage("plot_technique_comparison", cmd_plot_technique_comparison, (["--comparison"], req), (["--out"], req))
    stage("tables", cmd_tables)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    settings = json.loads(args.settings)
    settings.setdefault("runtime", {"device": "cpu", "dtype": "float32"})
    if args.stage in TORCH_STAGES:
        from workflow_lib import models

        models.configure_threads(args.threads)
    start = time.time()
    args.func(args, settings)
    log.info("%s done in %.1f s", args.stage, time.time() - start)


if __name__ == "__main__":
    main()
