"""`generate_plain` and `generate_directed`: a checkpoint's planned greedy generations, made once and stored.

The plan (`generation_plan`) merges what `refusal_eval`, `jailbreak` and `refusal_interventions`
read into conditions. Two jobs per checkpoint make them:
- `plain`: every condition without a hook (direct requests, templates, prefill); it needs no
  refusal direction, so it starts as soon as the checkpoint exists;
- `directed`: the conditions under a hook (ablation, activation addition), after the directions.
Each writes a `generations` table (token ids, text, refusal log-odds at the first position). The
stages that judge read it and cut answers to their own budgets (`answers`).

**Per-condition cache.** Snakemake deletes a job's outputs before it reruns the job, so each
condition is also kept in `<checkpoint>/generations/cache/`, named by a digest of everything
its answers depend on: the checkpoint's weights, the prompts' text, the wrapper, the hook and
the direction's tensors, the budget, the runtime, the refusal phrases and the code. A rerun
(say, after a template is added) generates only the conditions whose digest is new; a
checkpoint that is another's model (`shared_checkpoints`) finds that one's entries too.
Answers do not depend on which conditions share a batch beyond float rounding (tested: the
same tokens), so the stored entries equal what a full rerun would give.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from workflow_lib.core import direction_file, interventions
from workflow_lib.core import generation
from workflow_lib.evaluation import generation_plan, judges
from workflow_lib.data import jailbreak_templates
from workflow_lib.core import models, shared_checkpoints, tables

log = logging.getLogger(__name__)

PLAIN, DIRECTED = "plain", "directed"


@dataclass
class Answer:
    """One consumer's view of a stored answer, cut to its budget."""

    prompt_id: str
    response: str
    n_tokens: int
    truncated: bool
    refusal_score_logodds: float


def direction_sources(own_path, final_path, final_label: str | None) -> tuple[dict, dict]:
    """Where `own` and `own_or_final` point at this checkpoint, and each source's direction file contents."""
    files: dict[str, dict] = {}
    own = direction_file.read_direction(own_path) if own_path is not None else None
    if own is not None and own["status"] == direction_file.STATUS_OK:
        files["own"] = own
    if "own" not in files and final_path is not None:
        final = direction_file.read_direction(final_path)
        if final["status"] == direction_file.STATUS_OK:
            files[final_label] = final
    sources = {"none": None, "own": "own" if "own" in files else None,
               "own_or_final": "own" if "own" in files else (final_label if final_label in files else None)}
    return sources, files


def hook_context(lm, hook: str, direction: dict | None):
    """The hooks a condition runs under (`interventions`: Arditi et al. 2024, sections 2.4 and 3)."""
    if hook == "none":
        return contextlib.nullcontext()
    device = next(lm.parameters()).device
    if hook in ("ablation", "ablation_keep_first_token"):
        return interventions.ablation(lm, direction["tensors"]["direction"].to(device),
                                      hook == "ablation_keep_first_token")
    if hook == "actadd":
        raw = direction["tensors"]["direction_raw"].to(torch.float32).to(device)
        return interventions.addition(lm, raw, direction["layer"])
    raise ValueError(f"unknown hook {hook!r}; use one of {list(generation_plan.HOOKS)}")


def template_ids(jailbreak: dict | None, templates: pl.DataFrame | None) -> list[str]:
    """The jailbreak's templates as template_ids ('all' = every one); [] without template attacks."""
    if not jailbreak or "templates" not in jailbreak["attacks"]:
        return []
    if jailbreak["templates"] == "all":
        return templates["template_id"].to_list()
    return jailbreak_templates.resolve_ids(templates, jailbreak["templates"])


def selected_prompts(prompt_path, split: str, max_prompts: int | None) -> pl.DataFrame:
    """The first `max_prompts` prompts of a split, in the table's order (every stage selects alike)."""
    prompts = tables.read_table(prompt_path, "prompts").filter(pl.col("split") == split)
    return prompts.head(int(max_prompts)) if max_prompts is not None else prompts


def checkpoint_digest(checkpoint_dir) -> str:
    """The adapter's fingerprint, or a sha256 of every file when the checkpoint carries its own weights."""
    fingerprint = shared_checkpoints.fingerprint(checkpoint_dir)
    if fingerprint is not None:
        return fingerprint
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(checkpoint_dir).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(checkpoint_dir)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def tensor_digest(direction: dict | None) -> str | None:
    if direction is None:
        return None
    digest = hashlib.sha256(str(direction["layer"]).encode())
    for name in sorted(direction["tensors"]):
        digest.update(name.encode())
        digest.update(direction["tensors"][name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def wrapped(condition: generation_plan.Condition, requests: list[str], texts_by_id: dict, prefill: str | None):
    """(instructions, response prefixes) for a condition's requests."""
    if condition.wrapper.startswith("template:"):
        text = texts_by_id[condition.wrapper.split(":", 1)[1]]
        return [jailbreak_templates.wrap(text, r) for r in requests], [""] * len(requests)
    if condition.wrapper == "prefill":
        return list(requests), [prefill] * len(requests)
    return list(requests), [""] * len(requests)


def run(*, kind: str, model: str, technique: str, step: int, model_dir, checkpoint_dir, prompt_paths: dict[str, str],
        templates_path, settings: dict, code: str, runtime: dict, out_path, direction_path=None,
        final_direction_path=None, final_step: int | None = None, shared_checkpoint=None, shared_generations=None,
        device: str = "cpu", dtype: str = "float32") -> pl.DataFrame:
    """Make (or find in the cache) this checkpoint's `kind` generations and write the `generations` table.

    `settings` is the job's `generation_plan.job_settings`: its merged conditions, phrases, batch size."""
    templates = tables.read_table(templates_path, "attack_templates") if templates_path else None
    texts_by_id = dict(zip(templates["template_id"], templates["text"])) if templates is not None else {}

    def ids_of(name: str) -> list[str]:
        return (templates["template_id"].to_list() if name == "*"
                else jailbreak_templates.resolve_ids(templates, [name]))

    sources, files = ({}, {}) if kind == PLAIN else direction_sources(
        direction_path, final_direction_path, f"{technique}@{final_step}")
    plan = generation_plan.conditions(settings, sources, ids_of)
    prefill = settings.get("prefill")
    prompts = {c.key: selected_prompts(prompt_paths[c.prompt_set], c.split, c.max_prompts) for c in plan}
    cache_dir = Path(out_path).parent / "cache"
    shared_dir = (Path(shared_generations).parent / "cache"
                  if shared_checkpoint and shared_checkpoints.same_model(checkpoint_dir, shared_checkpoint) else None)
    base = {"checkpoint": checkpoint_digest(checkpoint_dir), "code": code, "runtime": runtime,
            "phrases": settings["refusal_start_phrases"]}
    keys = {"model": model, "technique": technique, "step": step}
    found, missing, digests = {}, [], {}
    for c in plan:
        direction = files.get(c.direction_source) if c.direction_source else None
        instructions, prefixes = wrapped(c, prompts[c.key]["text"].to_list(), texts_by_id, prefill)
        digests[c.key] = hashlib.sha256(json.dumps(base | {
            "condition": [c.prompt_set, c.split, c.wrapper, c.hook], "max_new_tokens": c.max_new_tokens,
            "prompts": prompts[c.key]["prompt_id"].to_list(), "instructions": instructions, "prefixes": prefixes,
            "direction": tensor_digest(direction)}, sort_keys=True).encode()).hexdigest()[:20]
        entry = next((d / f"{c.slug}.{digests[c.key]}.parquet" for d in (cache_dir, shared_dir)
                      if d is not None and (d / f"{c.slug}.{digests[c.key]}.parquet").is_file()), None)
        if entry is None:
            missing.append(c)
        else:
            found[c.key] = _relabel(tables.read_table(entry, "generations"), keys)
            if entry.parent == shared_dir:
                log.info("%s is the same model as %s: reused its %s generations", checkpoint_dir, shared_checkpoint,
                         c.slug)
    log.info("%s generations: %d conditions, %d from the cache, %d to generate", kind, len(plan), len(found),
             len(missing))
    if missing:
        lm, tokenizer = models.load_checkpoint(model_dir, checkpoint_dir, dtype=dtype, device=device)
        refusal_ids = judges.refusal_token_ids(tokenizer, settings["refusal_start_phrases"])
        made = generate(lm, tokenizer, missing, prompts, files, texts_by_id, prefill, refusal_ids,
                        int(settings["batch_size"]), keys)
        for c in missing:
            found[c.key] = made[c.key]
            _write_cache(made[c.key], cache_dir, c.slug, digests[c.key])
    frames = [found[c.key] for c in plan]
    table = pl.concat(frames) if frames else tables.empty_frame("generations")
    return tables.write_table(_relabel(table, keys), out_path, "generations")


def _relabel(frame: pl.DataFrame, keys: dict) -> pl.DataFrame:
    """Rows under this checkpoint's model, technique and step (a cache entry may be another checkpoint's)."""
    return frame.with_columns(model=pl.lit(keys["model"]), technique=pl.lit(keys["technique"]),
                              step=pl.lit(keys["step"], dtype=pl.Int64))


def generate(lm, tokenizer, conditions: list, prompts: dict, files: dict, texts_by_id: dict, prefill, refusal_ids,
             batch_size: int, keys: dict) -> dict[tuple, pl.DataFrame]:
    """Greedy answers for `conditions`: one `generation.generate` call per hook and direction, rows of every
    prompt set and wrapper pooled, so they sort by length together and batches fill across conditions."""
    out = {}
    groups: dict[tuple, list] = {}
    for c in conditions:
        groups.setdefault((c.hook, c.direction_source), []).append(c)
    for (hook, source), group in groups.items():
        instructions, prefixes, budgets = [], [], []
        for c in group:
            texts, pre = wrapped(c, prompts[c.key]["text"].to_list(), texts_by_id, prefill)
            instructions += texts
            prefixes += pre
            budgets += [c.max_new_tokens] * len(texts)
        what = f"generations: {hook}" + (f" ({source})" if source else "")
        with hook_context(lm, hook, files.get(source) if source else None):
            gens = generation.generate(lm, tokenizer, instructions, max_new_tokens=budgets, batch_size=batch_size,
                                       response_prefix=prefixes, what=what)
        scores = (judges.refusal_logodds(torch.stack([g.first_logits for g in gens]), refusal_ids).tolist()
                  if gens else [])
        offset = 0
        for c in group:
            n = prompts[c.key].height
            rows, row_scores = gens[offset:offset + n], scores[offset:offset + n]
            offset += n
            out[c.key] = tables.conform(pl.DataFrame({
                **{k: [v] * n for k, v in keys.items()},
                "prompt_set": [c.prompt_set] * n, "split": [c.split] * n,
                "prompt_id": prompts[c.key]["prompt_id"].to_list(), "wrapper": [c.wrapper] * n, "hook": [c.hook] * n,
                "direction_source": pl.Series([c.direction_source] * n, dtype=pl.Utf8),
                "max_new_tokens": [c.max_new_tokens] * n,
                "token_ids": pl.Series([g.token_ids for g in rows], dtype=pl.List(pl.Int64)),
                "n_tokens": [g.n_tokens for g in rows], "stopped": [not g.truncated for g in rows],
                "response": [g.response for g in rows],
                "refusal_score_logodds": pl.Series(row_scores, dtype=pl.Float64),
            }, schema_overrides={"step": pl.Int64}), "generations")
    return out


def decode(tokenizer, token_ids: list[int]) -> str:
    """The response text of token ids, as `generation.generate` writes it."""
    return tokenizer.decode(token_ids, skip_special_tokens=True).strip()


def _write_cache(frame: pl.DataFrame, cache_dir: Path, slug: str, digest: str) -> None:
    """Store one condition's rows; an older entry of the same condition is replaced, so the cache stays small."""
    path = cache_dir / f"{slug}.{digest}.parquet"
    tables.write_table(frame, path, "generations")
    for old in cache_dir.glob(f"{slug}.*.parquet"):
        if old != path:
            old.unlink(missing_ok=True)


def read(paths: list) -> pl.DataFrame:
    """Every given generations table, concatenated (plain and directed)."""
    frames = [tables.read_table(p, "generations") for p in paths if p]
    return pl.concat(frames) if frames else tables.empty_frame("generations")


def answers(table: pl.DataFrame, tokenizer, *, prompt_set: str, split: str, wrapper: str, hook: str,
            prompt_ids: list[str], max_new_tokens: int, direction_source: str | None = None) -> list[Answer] | None:
    """The stored answers to `prompt_ids` under one condition, cut to `max_new_tokens`; None when the
    condition was not generated (a hook without a direction). With a hook and no `direction_source`,
    the checkpoint's own direction is preferred over a borrowed one."""
    rows = table.filter((pl.col("prompt_set") == prompt_set) & (pl.col("split") == split)
                        & (pl.col("wrapper") == wrapper) & (pl.col("hook") == hook))
    if hook != "none":
        sources = rows["direction_source"].unique().to_list()
        chosen = direction_source or ("own" if "own" in sources else (sorted(sources)[0] if sources else None))
        rows = rows.filter(pl.col("direction_source") == chosen)
    if rows.is_empty():
        return None if prompt_ids else []
    by_id = {r["prompt_id"]: r for r in rows.iter_rows(named=True)}
    missing = [p for p in prompt_ids if p not in by_id]
    if missing:
        raise ValueError(f"the generations table lacks {len(missing)} of the {prompt_set} prompts for "
                         f"{wrapper}/{hook} (e.g. {missing[0]}); rerun its generate job")
    out = []
    for prompt_id in prompt_ids:
        row = by_id[prompt_id]
        if row["max_new_tokens"] < max_new_tokens:
            raise ValueError(f"{wrapper}/{hook} was generated with {row['max_new_tokens']} tokens, fewer than the "
                             f"{max_new_tokens} asked for; rerun its generate job")
        ids, truncated = generation_plan.cut(row["token_ids"], row["stopped"], max_new_tokens)
        response = row["response"] if len(ids) == row["n_tokens"] else decode(tokenizer, ids)
        out.append(Answer(prompt_id, response, len(ids), truncated, row["refusal_score_logodds"]))
    return out


def direction_source_of(table: pl.DataFrame, prompt_set: str, hook: str) -> str:
    """The direction a hooked condition used at this checkpoint (own preferred), or `none`."""
    sources = table.filter((pl.col("prompt_set") == prompt_set) & (pl.col("hook") == hook))["direction_source"]
    sources = sources.drop_nulls().unique().to_list()
    return "own" if "own" in sources else (sorted(sources)[0] if sources else "none")
