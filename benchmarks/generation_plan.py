"""One checkpoint's greedy generations: each stage generating its own (before issue 19) against the plan.

- **stages**: what `refusal_eval`, `jailbreak` and `refusal_interventions` generated before the plan,
  each for itself, pooled as they pooled (refusal_eval: both sets in one call; jailbreak: the
  hook-free attacks of a prompt set in one call, the direction ablation in another;
  interventions: one call per condition over both sets), with today's decoder.
- **plan**: `generation_store.run` for the plain and the directed generations, in a fresh folder
  (no cache), as the `generate` rule runs them.

Reports per way: seconds, answers and generated tokens; and, for every answer a stage judges, whether
the plan's stored answer (cut to the stage's budget) is the same text, with the same truncation.
Run it alone (nothing else on the machine), on a checkpoint with its own refusal direction:

    python benchmarks/generation_plan.py --root . --technique sft_refusal --step 50 \
        --out docs/measurements/generation_plan.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_lib.core import direction_file  # noqa: E402
from workflow_lib.core import generation
from workflow_lib.evaluation import generation_plan, generation_store
from workflow_lib.core import models
from workflow_lib.core import tables  # noqa: E402


def config_of(root: Path) -> dict:
    from snakemake.utils import validate

    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    validate(config, str(root / "config" / "schema.yaml"), set_default=True)
    return config


def stage_calls(settings: dict, prompts: dict, texts_by_id: dict) -> list[dict]:
    """The old stages' generation calls: (stage, label, prompt set, hook, instructions, prefixes, budget) pooled
    per call as the stages pooled them."""
    calls = []
    re_ = settings["refusal_eval"]
    pool = [dict(stage="refusal_eval", label="answers", prompt_set=s, split=re_["split"], wrapper="none",
                 n=re_["max_prompts"]) for s in re_["prompt_sets"]]
    calls.append(dict(hook="none", budget=int(re_["max_new_tokens"]), parts=pool))
    jb = settings["jailbreak"]
    for prompt_set, attacks in generation_plan.jailbreak_attacks(jb, list(texts_by_id)).items():
        plain = [dict(stage="jailbreak", label=a, prompt_set=prompt_set, split=jb["split"], wrapper=a, n=jb["max_prompts"])
                 for a in attacks if a != "direction_ablation"]
        calls.append(dict(hook="none", budget=int(jb["max_new_tokens"]), parts=plain))
        if "direction_ablation" in attacks:
            calls.append(dict(hook="ablation", budget=int(jb["max_new_tokens"]), parts=[dict(
                stage="jailbreak", label="direction_ablation", prompt_set=prompt_set, split=jb["split"],
                wrapper="none", n=jb["max_prompts"])]))
    iv = settings["interventions"]
    for condition in iv["conditions"]:
        calls.append(dict(hook=generation_plan.INTERVENTION_HOOK[condition], budget=int(iv["max_new_tokens"]), parts=[
            dict(stage="interventions", label=condition, prompt_set=s, split=iv["split"], wrapper="none",
                 n=iv["max_prompts"]) for s in ("harmful", "harmless")]))
    return calls


def run_stages(lm, tokenizer, calls, prompt_paths, texts_by_id, prefill, direction, batch_sizes):
    answers, start = {}, time.perf_counter()
    for call in calls:
        instructions, prefixes, index = [], [], []
        for part in call["parts"]:
            prompts = generation_store.selected_prompts(prompt_paths[part["prompt_set"]], part["split"], part["n"])
            condition = generation_plan.Condition(part["prompt_set"], part["split"], part["wrapper"], call["hook"],
                                                  None, part["n"], call["budget"])
            texts, pre = generation_store.wrapped(condition, prompts["text"].to_list(), texts_by_id, prefill)
            instructions += texts
            prefixes += pre
            index += [(part["stage"], part["label"], part["prompt_set"], pid) for pid in prompts["prompt_id"]]
        with generation_store.hook_context(lm, call["hook"], direction if call["hook"] != "none" else None):
            gens = generation.generate(lm, tokenizer, instructions, max_new_tokens=call["budget"],
                                       batch_size=batch_sizes[call["parts"][0]["stage"]], response_prefix=prefixes)
        answers.update({k: g for k, g in zip(index, gens)})
    return answers, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--technique", default="sft_refusal")
    parser.add_argument("--step", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    models.configure_threads(args.threads)
    root, config = args.root.resolve(), config_of(args.root.resolve())
    settings = generation_plan.settings_for(config, jailbreak=True, interventions=True)
    run = root / "results" / args.model / args.technique / f"step-{args.step}"
    checkpoint, model_dir = run / "checkpoint", root / "resources" / "models" / args.model
    direction_path = run / "refusal" / "refusal_direction.safetensors"
    direction = direction_file.read_direction(direction_path)
    assert direction["status"] == direction_file.STATUS_OK, "the benchmark needs a checkpoint with its own direction"
    prompt_paths = {s: str(root / "resources" / "prompts" / f"{s}.parquet") for s in ("harmful", "harmless")}
    templates_path = root / "resources" / "attacks" / args.model / "templates.parquet"
    templates = tables.read_table(templates_path, "attack_templates")
    ids = generation_store.template_ids(settings["jailbreak"], templates)
    texts_by_id = {t: x for t, x in zip(templates["template_id"], templates["text"]) if t in ids}
    batch_sizes = {"refusal_eval": config["refusal_eval"]["batch_size"], "jailbreak": config["jailbreak"]["batch_size"],
                   "interventions": config["refusal_direction"]["interventions"]["batch_size"]}

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = []
        for kind in ("plain", "directed"):
            path = Path(tmp) / "generations" / f"{kind}.parquet"
            generation_store.run(kind=kind, model=args.model, technique=args.technique, step=args.step,
                                 model_dir=model_dir, checkpoint_dir=checkpoint, prompt_paths=prompt_paths,
                                 templates_path=templates_path,
                                 settings=generation_plan.job_settings(settings, kind), code="benchmark",
                                 runtime={"device": "cpu", "dtype": "float32"}, out_path=path,
                                 direction_path=direction_path, final_direction_path=direction_path,
                                 final_step=args.step)
            paths.append(path)
        plan_seconds = time.perf_counter() - start  # two model loads included, as in the two jobs
        stored = generation_store.read(paths)

    start = time.perf_counter()
    lm, tokenizer = models.load_checkpoint(model_dir, checkpoint)
    load = time.perf_counter() - start
    calls = stage_calls(settings, prompt_paths, texts_by_id)
    answers, stage_seconds = run_stages(lm, tokenizer, calls, prompt_paths, texts_by_id,
                                        settings["jailbreak"]["prefill"], direction, batch_sizes)
    stage_seconds += 3 * load  # each stage loaded the model once

    differ, budgets = [], {"refusal_eval": settings["refusal_eval"]["max_new_tokens"],
                           "jailbreak": settings["jailbreak"]["max_new_tokens"],
                           "interventions": settings["interventions"]["max_new_tokens"]}
    hooks = {"direction_ablation": "ablation", "ablation": "ablation", "actadd": "actadd"}
    for (stage, label, prompt_set, prompt_id), g in answers.items():
        wrapper = label if stage == "jailbreak" and label not in hooks else "none"
        [a] = generation_store.answers(stored, tokenizer, prompt_set=prompt_set, split="test", wrapper=wrapper,
                                       hook=hooks.get(label, "none"), prompt_ids=[prompt_id],
                                       max_new_tokens=int(budgets[stage]))
        if (a.response, a.truncated) != (g.response, g.truncated):
            differ.append({"stage": stage, "label": label, "prompt_id": prompt_id, "stages": g.response,
                           "plan": a.response})
    result = {
        "checkpoint": f"{args.model}/{args.technique}@{args.step}", "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=Path(__file__).resolve().parents[1]).stdout.strip(),
        "stages": {"seconds": round(stage_seconds, 1), "answers": len(answers),
                   "generated_tokens": sum(g.n_tokens for g in answers.values()), "model_loads": 3},
        "plan": {"seconds": round(plan_seconds, 1), "answers": stored.height,
                 "generated_tokens": int(stored["n_tokens"].sum()), "model_loads": 2},
        "answers_judged": len(answers), "answers_that_differ": len(differ), "differences": differ[:20],
    }
    result["speedup"] = round(stage_seconds / plan_seconds, 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "differences"}, indent=1))


if __name__ == "__main__":
    main()
