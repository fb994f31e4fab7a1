import polars as pl
import pytest

from workflow_lib import tables


def _refusal_row(**overrides):
    row = {"model": "m", "technique": "t", "step": 3, "prompt_set": "harmful", "refusal_rate": 0.5,
           "refusal_score_logodds": -1.0, "n": 10, "status": "ok"}
    return pl.DataFrame([row | overrides])


def test_write_then_read_round_trips_and_orders_columns(tmp_path):
    df = _refusal_row().select(list(reversed(_refusal_row().columns)))
    path = tmp_path / "t.parquet"
    tables.write_table(df, path, "refusal_eval")
    back = tables.read_table(path, "refusal_eval")
    assert back.columns == [c.name for c in tables.SCHEMAS["refusal_eval"]]
    assert back.row(0, named=True)["refusal_rate"] == 0.5
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_missing_and_extra_columns_are_named():
    with pytest.raises(tables.SchemaError, match=r"missing columns \['status'\].*unexpected columns \['oops'\]"):
        tables.conform(_refusal_row().drop("status").with_columns(oops=pl.lit(1)), "refusal_eval")


def test_lossy_cast_is_rejected():
    with pytest.raises(tables.SchemaError, match="does not cast"):
        tables.conform(_refusal_row(n="ten"), "refusal_eval")


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "t.parquet"
    tables.write_table(_refusal_row(), path, "refusal_eval")
    with pytest.raises(tables.SchemaError):
        tables.write_table(_refusal_row().drop("n"), path, "refusal_eval")
    assert tables.read_table(path, "refusal_eval").height == 1
    assert len(list(tmp_path.iterdir())) == 1


def test_every_schema_is_documented():
    doc = tables.schema_markdown()
    for name, columns in tables.SCHEMAS.items():
        assert f"### `{name}`" in doc
        assert all(c.description and c.unit for c in columns)
