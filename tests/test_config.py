"""Config: overlays, --set overrides, fail-fast messages with the key path."""

from __future__ import annotations

import pytest

from recsys_batch.config import load_config, parse_override
from recsys_batch.errors import ConfigError


def test_base_local_and_overrides():
    cfg = load_config("local", ["matrix.half_life_days=3", "events.weights.view=0.5", "spark.conf={a.b: c}"])
    assert cfg.matrix.half_life_days == 3.0
    assert cfg.events.weights["view"] == 0.5 and cfg.events.weights["click"] == 1.0
    assert cfg.spark.master == "local[2]" and cfg.spark.conf == {"a.b": "c"}
    assert cfg.sources.events.required and cfg.sources.events.format == "parquet"


def test_cluster_overlay_leaves_master_to_spark_submit():
    cfg = load_config("cluster")
    assert cfg.spark.master is None and cfg.warehouse.root.startswith("hdfs://")
    assert cfg.spark.jars_packages == "io.delta:delta-spark_4.2_2.13:4.4.0"


@pytest.mark.parametrize("root", ["s3a://bucket/recsys", "hdfs:///recsys/wh", "/tmp/wh", "abfss://c@acct.dfs.core.windows.net/x"])
def test_warehouse_accepts_hadoop_uris(root):
    cfg = load_config("local", [f"warehouse.root={root}"])
    assert cfg.warehouse.table_path("events") == f"{root}/delta/events"


def test_unknown_key_names_the_path():
    with pytest.raises(ConfigError, match=r"matrix\.half_life_dayz: unknown key"):
        load_config("local", ["matrix.half_life_dayz=3"])


def test_bad_value_names_the_path_and_value():
    with pytest.raises(ConfigError, match=r"ingest\.max_reject_ratio: .*less than or equal to 1.*got 2"):
        load_config("local", ["ingest.max_reject_ratio=2"])
    with pytest.raises(ConfigError, match=r"events\.weights: .*>= 0"):
        load_config("local", ["events.weights.click=-1"])
    with pytest.raises(ConfigError, match=r"sources\.events\.format"):
        load_config("local", ["sources.events.format=xls"])


def test_overlay_file_and_errors(tmp_path):
    (tmp_path / "mine.yaml").write_text("warehouse: {root: /data/wh}\nmatrix: {lookback_days: 7}\n")
    cfg = load_config(tmp_path / "mine.yaml")
    assert cfg.warehouse.root == "/data/wh" and cfg.matrix.lookback_days == 7
    (tmp_path / "bad.yaml").write_text("matrix: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_parse_override():
    assert parse_override("a.b=null") == (["a", "b"], None)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("x.y=s3a://b/p") == (["x", "y"], "s3a://b/p")
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("novalue")


def test_config_hash_is_stable_and_sensitive():
    assert load_config("local").config_hash() == load_config("local").config_hash()
    assert load_config("local").config_hash() != load_config("local", ["matrix.lastn=7"]).config_hash()


def test_config_is_frozen():
    cfg = load_config("local")
    with pytest.raises(Exception):
        cfg.matrix.lastn = 3  # type: ignore[misc]
