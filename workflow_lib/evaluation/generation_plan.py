"""One generation plan per checkpoint: every greedy answer its measurements read, made once (issue 19).

Three stages judge greedy answers of a checkpoint: `refusal_eval` (direct requests),
`jailbreak` (direct, template-wrapped, prefilled, and under direction ablation) and
`refusal_interventions` (baseline, ablation, activation addition). Many of these are one
generation: the interventions' baseline is the jailbreak's `none` on the same prompts, the
jailbreak's `none` is the start of `refusal_eval`'s longer answers, and the interventions'
ablation is the jailbreak's direction ablation when the checkpoint has its own direction.

Here each stage's settings become `Need`s (which prompts, how wrapped, under which hook, how
many tokens). Needs that show the model the same text under the same hook are one
`Condition`, generated once for the most prompts and the most tokens any of them asks for
(`job_settings` merges at DAG time, `conditions` again once templates and directions are known).
Greedy decoding is a prefix function, so a consumer with a smaller budget reads the stored
token ids cut to its budget (`cut`), which is what a shorter generation would have produced;
the substring judge matches anywhere in the answer, so the cut matters.

Nothing here imports torch: the plan is pure and tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

# Hooks a condition runs under; `ablation` is Arditi et al. 2024's directional ablation (section 2.4),
# `ablation_keep_first_token` the same but sparing each prompt's first token, `actadd` activation addition.
HOOKS = ("none", "ablation", "ablation_keep_first_token", "actadd")
# Which direction a hooked need uses: this checkpoint's own, or the own one else the trajectory's final one.
DIRECTIONS = ("none", "own", "own_or_final")
INTERVENTION_HOOK = {"baseline": "none", "ablation": "ablation", "actadd": "actadd"}


@dataclass(frozen=True)
class Need:
    """One consumer's generations: prompts (the first `max_prompts` of a split), wrapper, hook, token budget."""

    stage: str  # refusal_eval, jailbreak or interventions
    label: str  # the stage's own name for it: the attack or intervention condition, or `answers`
    prompt_set: str
    split: str
    max_prompts: int | None  # None: the whole split
    wrapper: str  # none, template:<template_id> or prefill
    hook: str
    direction: str
    max_new_tokens: int


@dataclass(frozen=True)
class Condition:
    """One generation: the same text shown under the same hook and direction, made once."""

    prompt_set: str
    split: str
    wrapper: str
    hook: str
    direction_source: str | None  # None (no hook), own, or <technique>@<step>
    max_prompts: int | None
    max_new_tokens: int

    @property
    def key(self) -> tuple:
        return self.prompt_set, self.split, self.wrapper, self.hook, self.direction_source

    @property
    def slug(self) -> str:
        """A file name for the condition's cache entry."""
        parts = [self.prompt_set, self.split, self.wrapper, self.hook, self.direction_source or "nodir"]
        return "__".join(p.replace("/", "-").replace(":", "-").replace("@", "-at-") for p in parts)


def settings_for(config: dict, *, jailbreak: bool, interventions: bool) -> dict:
    """The settings a checkpoint's generations depend on: generation keys only, never a judge's.

    `jailbreak` and `interventions` say whether those stages measure this checkpoint. The
    refusal-start phrases are here because each answer's refusal log-odds is scored when it is
    generated: storing the whole first-position distribution instead would cost vocabulary x 4
    bytes per answer (about 2 GB per checkpoint with every template), so a phrase edit reruns
    the generations (config/README.md#generation-plan).
    """
    refusal_eval = config["refusal_eval"]
    out = {
        "refusal_eval": {k: refusal_eval[k] for k in ("prompt_sets", "split", "max_prompts", "max_new_tokens")},
        "refusal_start_phrases": list(refusal_eval["refusal_start_phrases"]),
        "batch_size": max([int(refusal_eval["batch_size"])]
                          + ([int(config["jailbreak"]["batch_size"])] if jailbreak else [])
                          + ([int(config["refusal_direction"]["interventions"]["batch_size"])] if interventions else [])),
        "jailbreak": None,
        "interventions": None,
    }
    if jailbreak:
        jb = config["jailbreak"]
        out["jailbreak"] = {k: jb[k] for k in ("split", "max_prompts", "attacks", "templates", "prefill",
                                              "over_refusal", "max_new_tokens")}
    if interventions:
        iv = config["refusal_direction"]["interventions"]
        out["interventions"] = {k: iv[k] for k in ("split", "max_prompts", "max_new_tokens", "conditions")}
        out["interventions"]["skip_first_token"] = bool(config["refusal_direction"]["skip_first_token"])
    return out


def job_settings(settings: dict, kind: str) -> dict:
    """What one generate job depends on: its merged conditions, the refusal phrases, the batch size, the prefill.

    `kind` is `plain` (no hook) or `directed` (a refusal-direction hook). Templates stay as the
    config names them (`*` for all: their ids come from the templates table at run time) and
    directions as `own` or `own_or_final` (resolved when the directions exist). Being the merged
    conditions, not the stages' keys, these settings change only when the job's answers would: an
    interventions budget below the jailbreak's leaves the plain job alone, a new template leaves
    the directed one alone.
    """
    jailbreak = settings.get("jailbreak")
    names = ([] if not jailbreak or "templates" not in jailbreak["attacks"]
             else ["*"] if jailbreak["templates"] == "all" else list(jailbreak["templates"]))
    wanted = [n for n in needs(settings, names) if (n.hook != "none") == (kind == "directed")]
    merged = merge([(n.prompt_set, n.split, n.wrapper, n.hook, n.direction, n.max_prompts, n.max_new_tokens)
                    for n in wanted])
    out = {"conditions": [dict(zip(("prompt_set", "split", "wrapper", "hook", "direction", "max_prompts",
                                    "max_new_tokens"), c)) for c in merged],
           "refusal_start_phrases": settings["refusal_start_phrases"], "batch_size": settings["batch_size"]}
    if any(c[2] == "prefill" for c in merged):
        out["prefill"] = jailbreak["prefill"]
    return out


def needs_directions(settings: dict) -> bool:
    """Whether any need runs under a hook, i.e. whether the checkpoint has a directed generate job."""
    return bool(job_settings(settings, "directed")["conditions"])


def merge(rows: list[tuple]) -> list[tuple]:
    """Rows (key..., max_prompts, max_new_tokens) with one key merged into one row: the most prompts (None:
    all) and the most tokens; first-seen order."""
    merged: dict[tuple, tuple] = {}
    for row in rows:
        key, prompts, tokens = row[:-2], row[-2], row[-1]
        if key in merged:
            old_prompts, old_tokens = merged[key]
            prompts = None if None in (prompts, old_prompts) else max(prompts, old_prompts)
            tokens = max(tokens, old_tokens)
        merged[key] = (prompts, tokens)
    return [(*key, prompts, tokens) for key, (prompts, tokens) in merged.items()]


def needs(settings: dict, template_ids: list[str]) -> list[Need]:
    """Every consumer's needs, in a fixed order; `template_ids` are the jailbreak's resolved templates."""
    out: list[Need] = []
    re_ = settings.get("refusal_eval") or {"prompt_sets": []}
    for prompt_set in re_["prompt_sets"]:
        out.append(Need("refusal_eval", "answers", prompt_set, re_["split"], re_["max_prompts"], "none", "none",
                        "none", int(re_["max_new_tokens"])))
    jb = settings.get("jailbreak")
    if jb:
        for prompt_set, attacks in jailbreak_attacks(jb, template_ids).items():
            for attack in attacks:
                hook, direction = ("ablation", "own_or_final") if attack == "direction_ablation" else ("none", "none")
                wrapper = "none" if attack == "direction_ablation" else attack
                out.append(Need("jailbreak", attack, prompt_set, jb["split"], jb["max_prompts"], wrapper, hook,
                                direction, int(jb["max_new_tokens"])))
    iv = settings.get("interventions")
    if iv:
        for prompt_set in ("harmful", "harmless"):
            for condition in iv["conditions"]:
                hook = INTERVENTION_HOOK[condition]
                if hook == "ablation" and iv.get("skip_first_token"):
                    hook = "ablation_keep_first_token"
                out.append(Need("interventions", condition, prompt_set, iv["split"], iv["max_prompts"], "none", hook,
                                "none" if hook == "none" else "own", int(iv["max_new_tokens"])))
    return out


def jailbreak_attacks(jailbreak: dict, template_ids: list[str]) -> dict[str, list[str]]:
    """Attacks per prompt set: every attack on harmful prompts; direct and templates on harmless ones."""
    attacks: list[str] = []
    for attack in jailbreak["attacks"]:
        attacks += [f"template:{t}" for t in template_ids] if attack == "templates" else [attack]
    harmless = [a for a in attacks if a == "none" or a.startswith("template:")] if jailbreak["over_refusal"] else []
    return {"harmful": attacks, "harmless": harmless}


def conditions(job: dict, sources: dict[str, str | None], template_ids) -> list[Condition]:
    """A generate job's conditions at this checkpoint: templates expanded to ids, directions resolved.

    `sources` maps `own` and `own_or_final` to the direction source they resolve to (`own`,
    `<technique>@<step>`) or None when there is none: those conditions are left out (their stages
    report `no_direction`). `template_ids(name)` gives the ids of a configured template name (`*`:
    all). Conditions that meet here (the interventions' ablation and the jailbreak's direction
    ablation, both on the own direction) are merged again.
    """
    rows = []
    for c in job["conditions"]:
        source = None
        if c["hook"] != "none":
            source = sources.get(c["direction"])
            if source is None:
                continue
        wrappers = ([f"template:{t}" for t in template_ids(c["wrapper"].split(":", 1)[1])]
                    if c["wrapper"].startswith("template:") else [c["wrapper"]])
        rows += [(c["prompt_set"], c["split"], w, c["hook"], source, c["max_prompts"], c["max_new_tokens"])
                 for w in wrappers]
    return [Condition(*row) for row in merge(rows)]


def cut(token_ids: list[int], stopped: bool, max_new_tokens: int) -> tuple[list[int], bool]:
    """A longer greedy generation cut to a smaller budget: (token ids, truncated) as that budget gives.

    The stored ids end with the stop token when the answer stopped; cut before it, the answer
    did not stop within the budget.
    """
    kept = token_ids[:max_new_tokens]
    return kept, not (stopped and len(token_ids) <= max_new_tokens)
