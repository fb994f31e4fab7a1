"""One generation plan per checkpoint: every greedy answer its measurements read, made once (issue 19).

Three stages judge greedy answers of a checkpoint: `refusal_eval` (direct requests),
`jailbreak` (direct, template-wrapped, prefilled, and under direction ablation) and
`refusal_interventions` (baseline, ablation, activation addition). Many of these are one
generation: the interventions' baseline is the jailbreak's `none` on the same prompts, the
jailbreak's `none` is the start of `refusal_eval`'s longer answers, and the interventions'
ablation is the jailbreak's direction ablation when the checkpoint has its own direction.

Here each stage's settings become `Need`s (which prompts, how wrapped, under which hook, how
many tokens). Needs that show the model the same text under the same hook are one
`Condition`, generated once for the most prompts and the most tokens any of them asks for.
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


def needs_directions(settings: dict) -> bool:
    """Whether any need runs under a hook, i.e. whether the checkpoint has a directed generation job."""
    return any(n.hook != "none" for n in needs(settings, template_ids=[]))


def for_kind(settings: dict, kind: str) -> dict:
    """The settings one generation job depends on: `plain` (no hook) or `directed` (a refusal-direction hook).

    Each job's settings hold only what changes its own conditions, so that, say, a new template
    reruns the plain job but not the directed one, and a `refusal_eval` budget leaves the
    directed answers alone.
    """
    hooked = kind == "directed"
    out = dict(settings)
    out["refusal_eval"] = None if hooked else settings["refusal_eval"]
    jailbreak = settings.get("jailbreak")
    if jailbreak:
        attacks = [a for a in jailbreak["attacks"] if (a == "direction_ablation") == hooked]
        jailbreak = None if not attacks else {
            **{k: jailbreak[k] for k in ("split", "max_prompts", "max_new_tokens")}, "attacks": attacks,
            "over_refusal": jailbreak["over_refusal"] and not hooked,
            **({"templates": jailbreak["templates"]} if "templates" in attacks else {}),
            **({"prefill": jailbreak["prefill"]} if "prefill" in attacks else {})}
    out["jailbreak"] = jailbreak
    interventions = settings.get("interventions")
    if interventions:
        conditions = [c for c in interventions["conditions"] if (INTERVENTION_HOOK[c] != "none") == hooked]
        interventions = None if not conditions else {**interventions, "conditions": conditions}
        if interventions and not hooked:
            interventions.pop("skip_first_token")
    out["interventions"] = interventions
    return out


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


def resolve(need: Need, sources: dict[str, str | None]) -> str | None | bool:
    """The direction source a need runs with: None for no hook, a source name, or False (no direction)."""
    if need.hook == "none":
        return None
    source = sources.get(need.direction)
    return source if source is not None else False


def conditions(all_needs: list[Need], sources: dict[str, str | None]) -> list[Condition]:
    """The needs merged into conditions: same text, hook and direction -> one, at the largest budget.

    `sources` maps `own` and `own_or_final` to the direction source they resolve to at this
    checkpoint (`own`, `<technique>@<step>`) or None when there is none; needs without a
    direction are left out (their stages report `no_direction`).
    """
    merged: dict[tuple, Condition] = {}
    for need in all_needs:
        source = resolve(need, sources)
        if source is False:
            continue
        key = (need.prompt_set, need.split, need.wrapper, need.hook, source)
        old = merged.get(key)
        if old is None:
            merged[key] = Condition(*key, max_prompts=need.max_prompts, max_new_tokens=need.max_new_tokens)
            continue
        most = None if None in (old.max_prompts, need.max_prompts) else max(old.max_prompts, need.max_prompts)
        merged[key] = Condition(*key, max_prompts=most, max_new_tokens=max(old.max_new_tokens, need.max_new_tokens))
    return list(merged.values())


def cut(token_ids: list[int], stopped: bool, max_new_tokens: int) -> tuple[list[int], bool]:
    """A longer greedy generation cut to a smaller budget: (token ids, truncated) as that budget gives.

    The stored ids end with the stop token when the answer stopped; cut before it, the answer
    did not stop within the budget.
    """
    kept = token_ids[:max_new_tokens]
    return kept, not (stopped and len(token_ids) <= max_new_tokens)
