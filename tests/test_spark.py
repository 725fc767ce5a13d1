"""Session factory: conf for local and cluster, Delta jar resolution, Java checks."""

from __future__ import annotations

import stat

import pytest

from recsys_batch.config import load_config
from recsys_batch.errors import EnvironmentProblem
from recsys_batch.spark import (
    DELTA_PACKAGE, JARS_DIR_ENV, _artifact, check_java, java_major_version, session_conf,
)


def _fake_java(tmp_path, text):
    p = tmp_path / "java"
    p.write_text(f"#!/bin/sh\necho '{text}' >&2\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return str(p)


def test_local_conf(tmp_path, monkeypatch):
    (tmp_path / "delta-spark_4.2_2.13-4.4.0.jar").write_bytes(b"")
    (tmp_path / "delta-storage-4.4.0.jar").write_bytes(b"")
    monkeypatch.setenv(JARS_DIR_ENV, str(tmp_path))
    conf = session_conf(load_config("local").spark)
    assert conf["spark.master"] == "local[2]" and conf["spark.ui.enabled"] == "false"
    assert conf["spark.sql.session.timeZone"] == "UTC" and conf["spark.sql.shuffle.partitions"] == "8"
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert conf["spark.jars"].split(",") == [str(tmp_path / "delta-spark_4.2_2.13-4.4.0.jar"),
                                             str(tmp_path / "delta-storage-4.4.0.jar")]
    assert "spark.jars.packages" not in conf


def test_cluster_conf_uses_packages_without_a_jar_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(JARS_DIR_ENV, str(tmp_path / "empty"))
    conf = session_conf(load_config("cluster").spark)
    assert "spark.master" not in conf and "spark.driver.memory" not in conf
    assert conf["spark.jars.packages"] == DELTA_PACKAGE
    assert conf["spark.sql.adaptive.skewJoin.enabled"] == "true"


def test_prefer_packages(tmp_path, monkeypatch):
    (tmp_path / "delta-spark_4.2_2.13-4.4.0.jar").write_bytes(b"")
    monkeypatch.setenv(JARS_DIR_ENV, str(tmp_path))
    cfg = load_config("local", [f"spark.jars_packages={DELTA_PACKAGE}", "spark.prefer_packages=true"])
    conf = session_conf(cfg.spark)
    assert conf["spark.jars.packages"] == DELTA_PACKAGE and "spark.jars" not in conf


@pytest.mark.parametrize("text,major", [
    ('openjdk version "17.0.15" 2025-04-15', 17), ('java version "1.8.0_402"', 8), ('openjdk version "21" 2023-09-19', 21),
])
def test_java_version_parsing(tmp_path, text, major):
    assert java_major_version(_fake_java(tmp_path, text)) == major


def test_java_missing_or_old(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nojava"))
    with pytest.raises(EnvironmentProblem, match="Java not found: Spark 4 needs Java 17"):
        check_java()
    (tmp_path / "old" / "bin").mkdir(parents=True)
    java = _fake_java(tmp_path / "old" / "bin", 'java version "1.8.0_402"')
    assert java.endswith("bin/java")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "old"))
    with pytest.raises(EnvironmentProblem, match="Java 8 found, but Spark 4 needs Java 17"):
        check_java()


def test_artifact_names():
    assert _artifact("parquet-hadoop-1.16.0.jar") == "parquet-hadoop"
    assert _artifact("delta-spark_4.2_2.13-4.4.0.jar") == "delta-spark_4.2_2.13"
    assert _artifact("zstd-jni-1.5.7-3.jar") == "zstd-jni"


def test_session_has_delta_and_utc(spark):
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert spark.conf.get("spark.sql.extensions") == "io.delta.sql.DeltaSparkSessionExtension"


def test_make_check_java_says_which_version(tmp_path):
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "bin").mkdir()
    _fake_java(tmp_path / "bin", 'openjdk version "11.0.2" 2019-01-15')
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    res = subprocess.run(["make", "-s", "check-java"], cwd=root, env=env, capture_output=True, text=True)
    assert res.returncode != 0 and "Java 11 found, Spark 4 needs Java 17" in res.stderr
    ok = subprocess.run(["make", "-s", "check-java"], cwd=root, capture_output=True, text=True)
    assert ok.returncode == 0 and ": ok" in ok.stdout
