"""Structure of one checkpoint's susceptibilities: the response matrix, its PCA and signed contrasts.

Following Baker et al. (2025), every observable token is a point in component
space: its vector of chi over the components. The response matrix stacks these
vectors (rows: observable tokens, columns: components). Its principal
components say which combinations of components respond together, and each
observable's mean score on a PC says which data drive that pattern. Signed
contrasts (e.g. harmful+refusal minus harmless+answer) give one number per
component that the analysis can follow across checkpoints.

Only components whose status is `ok` and whose values are all finite enter
the PCA, so one diverged chain cannot dominate it.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from workflow_lib.core import tables


TOKEN_ROWS = ["observable", "prompt_id", "token_pos", "segment"]
SEQUENCE_ROWS = ["observable", "prompt_id", "segment"]


def response_matrix(tokens: pl.DataFrame, components: list[str],
                    index: list[str] = TOKEN_ROWS) -> tuple[np.ndarray, pl.DataFrame]:
    """(matrix of shape rows x components, the row keys) from a `susceptibility_tokens` table (a row per token)
    or a `susceptibility_sequences` table with a `segment` column (a row per sequence's answer)."""
    wide = (tokens.filter(pl.col("component").is_in(components))
            .pivot(on="component", index=index, values="chi")
            .sort(index))
    return wide.select(components).to_numpy().astype(np.float64), wide.select(index)


def principal_components(matrix: np.ndarray, n_pcs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(explained variance ratio, loadings pcs x components, scores tokens x pcs) of the column-centred matrix.

    Signs are fixed so that each PC's largest-magnitude loading is positive, which
    keeps PCs comparable between checkpoints.
    """
    centred = matrix - matrix.mean(axis=0, keepdims=True)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    total = float((singular ** 2).sum())
    k = min(n_pcs, len(singular))
    loadings = vt[:k]
    signs = np.sign(loadings[np.arange(k), np.abs(loadings).argmax(axis=1)])
    loadings = loadings * np.where(signs == 0, 1.0, signs)[:, None]
    ratio = (singular[:k] ** 2) / total if total > 0 else np.full(k, np.nan)
    return ratio, loadings, centred @ loadings.T


def contrasts(aggregate: pl.DataFrame, pairs: dict[str, list[str]]) -> pl.DataFrame:
    """Per component and contrast: mean answer-token chi of the first observable minus the second's."""
    wide = aggregate.pivot(on="observable", index="component", values="chi_mean")
    frames = []
    for name, (plus, minus) in pairs.items():
        if plus in wide.columns and minus in wide.columns:
            frames.append(wide.select("component", contrast=pl.lit(name), value=pl.col(plus) - pl.col(minus)))
    return pl.concat(frames) if frames else pl.DataFrame(schema={"component": pl.Utf8, "contrast": pl.Utf8,
                                                                  "value": pl.Float64})


def structure(tokens: pl.DataFrame, aggregate: pl.DataFrame, settings: dict,
              index: list[str] = TOKEN_ROWS) -> pl.DataFrame:
    """The long `susceptibility_structure` rows (without checkpoint keys).

    The PCA's columns are the components of the kinds in `settings["pca_kinds"]`
    (all when unset) that have rows in `tokens`; its rows are tokens or sequences
    (`index`).
    """
    ok = aggregate.group_by("component").agg(ok=(pl.col("status") == "ok").all())
    kinds = settings.get("pca_kinds")
    present = set(tokens["component"].unique().to_list())
    usable = [c for c in aggregate.filter(pl.col("component_kind").is_in(kinds) if kinds else pl.lit(True))
              ["component"].unique(maintain_order=True).to_list()
              if c in present and ok.filter(pl.col("component") == c)["ok"].item()
              and tokens.filter(pl.col("component") == c)["chi"].is_finite().all()]
    rows: list[dict] = []
    if len(usable) >= 2:
        matrix, keys = response_matrix(tokens, usable, index)
        ratio, loadings, scores = principal_components(matrix, int(settings.get("n_pcs", 5)))
        for pc in range(len(ratio)):
            rows.append({"quantity": "explained_variance_ratio", "pc": pc + 1, "value": float(ratio[pc])})
            rows += [{"quantity": "loading", "pc": pc + 1, "component": c, "value": float(loadings[pc, j])}
                     for j, c in enumerate(usable)]
        answer = (keys["segment"] == "answer").to_numpy()  # sequence rows are answers
        observable = keys["observable"].to_numpy()
        for name in np.unique(observable):
            chosen = answer & (observable == name)
            for pc in range(len(ratio)):
                rows.append({"quantity": "observable_score", "pc": pc + 1, "observable": str(name),
                             "value": float(scores[chosen, pc].mean()) if chosen.any() else float("nan")})
    for row in contrasts(aggregate, settings.get("contrasts", {})).iter_rows(named=True):
        rows.append({"quantity": "contrast", "component": row["component"], "contrast": row["contrast"],
                     "value": row["value"]})
    schema = {"quantity": pl.Utf8, "pc": pl.Int64, "component": pl.Utf8, "observable": pl.Utf8,
              "contrast": pl.Utf8, "value": pl.Float64}
    return pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema)


def write_structure(*, tokens_path, table_path, settings: dict, out_path, sequences_path=None) -> pl.DataFrame:
    """PCA over tokens (SGLD: the tokens table), or over sequences (linear response: `sequences_path`)."""
    aggregate = tables.read_table(table_path, "susceptibility")
    if sequences_path:
        rows_frame = tables.read_table(sequences_path, "susceptibility_sequences").with_columns(
            segment=pl.lit("answer"))
        index = SEQUENCE_ROWS
    else:
        rows_frame, index = tables.read_table(tokens_path, "susceptibility_tokens"), TOKEN_ROWS
    keys = aggregate.select("model", "technique", "step", "seed", "estimator").unique()
    if keys.height != 1:
        raise ValueError(f"{table_path} holds {keys.height} checkpoints; expected one")
    rows = structure(rows_frame, aggregate, settings, index).with_columns(
        **{k: pl.lit(v) for k, v in keys.row(0, named=True).items()})
    return tables.write_table(rows, out_path, "susceptibility_structure")


def _spearman(x: pl.DataFrame, y: pl.DataFrame) -> float:
    """Spearman correlation of two (component, value) frames over their shared components."""
    pair = x.join(y, on="component", suffix="_b")
    if pair.height < 3:
        raise ValueError(f"need at least 3 shared components to rank; got {pair.height}")
    ranks = pair.select(pl.col("value").rank(), pl.col("value_b").rank()).to_numpy()
    return float(np.corrcoef(ranks[:, 0], ranks[:, 1])[0, 1])


def ranking_agreement(a: pl.DataFrame, b: pl.DataFrame, observable: str) -> float:
    """Spearman correlation of two runs' component rankings by mean answer-token chi on `observable`."""
    def pick(t):
        return t.filter(pl.col("observable") == observable).select("component", value="chi_mean")
    return _spearman(pick(a), pick(b))


def seed_agreement(table_paths: list[str], primary: str, pairs: dict[str, list[str]], out_path) -> pl.DataFrame:
    """Ranking agreement (Spearman) between every pair of seeds of one checkpoint.

    Rankings by every observable's mean chi, and by every configured contrast
    (observable a minus b), whose common part (a component's response to all
    text alike) cancels.
    """
    runs = [tables.read_table(p, "susceptibility") for p in table_paths]
    keys = pl.concat([r.select("model", "technique", "step") for r in runs]).unique()
    if keys.height != 1:
        raise ValueError(f"the seed check compares one checkpoint; got {keys.rows()}")
    rows = []
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            base = keys.row(0, named=True) | {"seed_a": a["seed"][0], "seed_b": b["seed"][0]}
            for observable in a["observable"].unique(maintain_order=True):
                rows.append(base | {"ranked_by": "observable", "name": observable,
                                    "spearman": ranking_agreement(a, b, observable),
                                    "n_components": a.filter(pl.col("observable") == observable).height,
                                    "primary": observable == primary})
            ca, cb = contrasts(a, pairs), contrasts(b, pairs)
            for name in ca["contrast"].unique(maintain_order=True):
                x = ca.filter(pl.col("contrast") == name).select("component", "value")
                rows.append(base | {"ranked_by": "contrast", "name": name,
                                    "spearman": _spearman(x, cb.filter(pl.col("contrast") == name)
                                                          .select("component", "value")),
                                    "n_components": x.height, "primary": name == primary})
    return tables.write_table(pl.DataFrame(rows), out_path, "susceptibility_seed_check")
