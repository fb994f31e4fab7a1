"""One checkpoint's greedy generations, the old decoding against the new, side by side in one process.

The workload is every greedy generation the default config's evaluation stages make
on one checkpoint: `refusal_eval` (harmful and harmless test prompts, 64 tokens),
`jailbreak` (32 harmful prompts x direct, two templates, prefill, direction ablation,
plus 32 harmless x direct and templates; 48 tokens) and the interventions (32 + 32
prompts x baseline, ablation, activation addition; 48 tokens).

- **old**: the stages as they were at df480e7, with that commit's batch sizes (16, 32, 16):
  one `model.generate(output_logits=True)` call per prompt set and attack (or condition),
  every step computing every row of the batch until its longest answer ends, every step's
  logits kept;
- **new**: `generation.generate` as the stages call it now: finished rows leave the
  batch and KV cache, only the first position's logits are kept, `inference_mode`, and
  the calls that share a hook are pooled (a stage's prompt sets together; the jailbreak's
  hook-free attacks together) so batches fill across them, with the current config's batch
  sizes (`--config`).

Reported per stage: seconds (old and new, alternating which runs first), rows x steps
computed by the decoding loop (the compute the old way spent on finished rows shows up
here), tokens kept, and how many answers differ in their token ids between the two.
Peak RSS is of the whole process.

Usage (from the repository root, after the checkpoint and its direction exist):
    .venv/bin/python benchmarks/generation_decoding.py [--threads 1] \
        [--run results/smollm2-135m/sft_refusal/step-50] [--out docs/measurements/generation_decoding.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_lib.core import chat  # noqa: E402
from workflow_lib.core import direction_file
from workflow_lib.core import generation
from workflow_lib.evaluation import generation_plan, generation_store
from workflow_lib.data import jailbreak_templates  # noqa: E402
from workflow_lib.core import models
from workflow_lib.refusal import refusal_direction  # noqa: E402
from workflow_lib.core import tables


def old_generate(model, tokenizer, instructions, *, max_new_tokens, batch_size, response_prefix=""):
    """The decoding of df480e7: HF `generate`, all rows to the longest answer, every step's logits kept.
    Returns (token id lists, rows x steps computed)."""
    tokenizer.padding_side = "left"
    prefixes = [response_prefix] * len(instructions) if isinstance(response_prefix, str) else response_prefix
    texts = [chat.prompt_text(tokenizer, i) + p for i, p in zip(instructions, prefixes)]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    stop_ids = generation.end_of_turn_ids(model, tokenizer)
    out_ids, row_steps = [None] * len(texts), 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids,
                                 pad_token_id=tokenizer.pad_token_id, return_dict_in_generate=True,
                                 output_logits=True)
        new = out.sequences[:, batch["input_ids"].shape[1]:].tolist()
        row_steps += len(idx) * len(out.logits)
        for row, i in enumerate(idx):
            stops = [k for k, tok in enumerate(new[row]) if tok in stop_ids]
            out_ids[i] = new[row][:stops[0] + 1] if stops else new[row]
    return out_ids, row_steps


def workload(cfg: dict, run: Path, prompts_dir: Path, templates_path: Path) -> dict[str, list[dict]]:
    """Per stage, the generation calls of the old stages: instructions, prefix, hook, tokens, batch size."""
    def prompts(name, split, limit):
        return refusal_direction.read_prompts(prompts_dir / f"{name}.parquet", split, limit)

    direction = direction_file.read_direction(run / "refusal" / "refusal_direction.safetensors")
    assert direction["status"] == refusal_direction.STATUS_OK, "the benchmark needs a checkpoint with a direction"
    re_cfg, jb, iv = cfg["refusal_eval"], cfg["jailbreak"], cfg["refusal_direction"]["interventions"]
    templates = tables.read_table(templates_path, "attack_templates")
    texts_by_id = dict(zip(templates["template_id"], templates["text"]))
    calls = {"refusal_eval": [], "jailbreak": [], "interventions": []}
    for name in re_cfg["prompt_sets"]:
        calls["refusal_eval"].append(dict(pool="all", texts=prompts(name, re_cfg["split"], re_cfg["max_prompts"]), prefix="",
                                          hook=None, tokens=re_cfg["max_new_tokens"], batch=re_cfg["batch_size"]))
    attacks = generation_plan.jailbreak_attacks(jb, generation_store.template_ids(jb, templates))
    for name in ["harmful", "harmless"]:
        requests = prompts(name, "test", jb["max_prompts"])
        for attack in attacks[name]:
            tid = attack.split(":", 1)[1] if attack.startswith("template:") else None
            calls["jailbreak"].append(dict(
                pool=name, texts=[jailbreak_templates.wrap(texts_by_id[tid], r) for r in requests] if tid else requests,
                prefix=jb["prefill"] if attack == "prefill" else "",
                hook="ablation" if attack == "direction_ablation" else None,
                tokens=jb["max_new_tokens"], batch=jb["batch_size"]))
    for name in ["harmful", "harmless"]:
        for condition in ["baseline", "ablation", "actadd"]:
            calls["interventions"].append(dict(pool="all", texts=prompts(name, iv["split"], iv["max_prompts"]), prefix="",
                                               hook=None if condition == "baseline" else condition,
                                               tokens=iv["max_new_tokens"], batch=iv["batch_size"]))
    return calls, direction


def hook(lm, direction, name):
    return generation_store.hook_context(lm, name or "none", direction)


def run_old(lm, tok, calls, direction):
    ids, row_steps = [], 0
    for c in calls:
        with hook(lm, direction, c["hook"]):
            got, steps = old_generate(lm, tok, c["texts"], max_new_tokens=c["tokens"], batch_size=c["batch"],
                                      response_prefix=c["prefix"])
        ids += got
        row_steps += steps
    return ids, row_steps


def run_new(lm, tok, calls, direction):
    """Pooled as the stages pool now: the calls of one pool (a stage's prompt sets; the jailbreak's attacks
    on one prompt set) that share a hook go together."""
    groups: dict[tuple, list[int]] = {}
    for k, c in enumerate(calls):
        groups.setdefault((c["pool"], c["hook"], c["tokens"], c["batch"]), []).append(k)
    ids: list = [None] * len(calls)
    for (_, name, tokens, batch), members in groups.items():
        texts = [t for k in members for t in calls[k]["texts"]]
        prefixes = [calls[k]["prefix"] for k in members for _ in calls[k]["texts"]]
        with hook(lm, direction, name):
            gens = generation.generate(lm, tok, texts, max_new_tokens=tokens, batch_size=batch,
                                       response_prefix=prefixes)
        offset = 0
        for k in members:
            ids[k] = [g.token_ids for g in gens[offset:offset + len(calls[k]["texts"])]]
            offset += len(calls[k]["texts"])
    flat = [row for part in ids for row in part]
    return flat, sum(len(row) for row in flat)  # rows x steps computed = tokens decoded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--old-commit", default="df480e7", help="the commit whose config gives the old batch sizes")
    ap.add_argument("--run", default="results/smollm2-135m/sft_refusal/step-50")
    ap.add_argument("--model-dir", default="resources/models/smollm2-135m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stages", nargs="+", default=["refusal_eval", "jailbreak", "interventions"])
    ap.add_argument("--against-batch", type=int, default=None,
                    help="compare the new decoding at this batch size instead of the old decoding")
    ap.add_argument("--out", default="docs/measurements/generation_decoding.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(Path(args.config).read_text())
    run = Path(args.run)
    old_cfg = yaml.safe_load(subprocess.run(["git", "show", f"{args.old_commit}:config/config.yaml"], check=True,
                                            capture_output=True, text=True).stdout)
    templates = Path("resources/attacks") / Path(args.model_dir).name / "templates.parquet"
    calls, direction = workload(cfg, run, Path("resources/prompts"), templates)
    old_calls, _ = workload(old_cfg, run, Path("resources/prompts"), templates)
    calls = {k: v for k, v in calls.items() if k in args.stages}
    if args.against_batch:
        old_calls = {k: [c | {"batch": args.against_batch} for c in v] for k, v in calls.items()}
    lm, tok = models.load_checkpoint(args.model_dir, run / "checkpoint")
    lm.eval()
    result = {"checkpoint": str(run), "threads": args.threads, "stages": {},
              "old_way": f"new decoding at batch {args.against_batch}" if args.against_batch else "df480e7"}
    for n, (stage, stage_calls) in enumerate(calls.items()):
        assert [c["texts"] for c in stage_calls] == [c["texts"] for c in old_calls[stage]], "the two configs differ"
        order = ["old", "new"] if n % 2 == 0 else ["new", "old"]
        timing, got = {}, {}
        for way in order:
            start = time.perf_counter()
            old_way = run_new if args.against_batch else run_old
            got[way] = (old_way(lm, tok, old_calls[stage], direction) if way == "old"
                        else run_new(lm, tok, stage_calls, direction))
            timing[way] = time.perf_counter() - start
        (old_ids, old_steps), (new_ids, new_steps) = got["old"], got["new"]
        result["stages"][stage] = {
            "calls": len(stage_calls), "answers": len(old_ids), "first": order[0],
            "old_batch": old_calls[stage][0]["batch"], "new_batch": stage_calls[0]["batch"],
            "old_s": round(timing["old"], 1), "new_s": round(timing["new"], 1),
            "speedup": round(timing["old"] / timing["new"], 2),
            "old_row_steps": old_steps, "new_row_steps": new_steps,
            "tokens_kept": sum(len(r) for r in old_ids),
            "answers_differing": sum(a != b for a, b in zip(old_ids, new_ids)),
        }
        print(stage, result["stages"][stage], flush=True)
    total = {k: sum(s[k] for s in result["stages"].values()) for k in ["old_s", "new_s", "old_row_steps",
                                                                      "new_row_steps", "answers_differing"]}
    total["speedup"] = round(total["old_s"] / total["new_s"], 2)
    result["total"] = total
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(result["total"]), "peak RSS MB", result["peak_rss_mb"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
