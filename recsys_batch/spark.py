"""The one place a SparkSession is built.

* **local** (default, tests, demo): ``spark.master`` from config (``local[2]``), few shuffle partitions,
  UI off, UTC session time zone.
* **cluster**: set ``spark.master: null`` (the ``cluster`` overlay does) and let spark-submit / the
  cluster manager decide master, deploy mode and resources.
* **Delta jars**, in this order:
  1. ``spark.prefer_packages: true`` + ``spark.jars_packages`` -> Spark resolves Maven coordinates;
  2. a jar folder: env ``RECSYS_BATCH_JARS_DIR``, else ``spark.jars_dir``, else ``<project>/.jars``
     (filled once by ``make jars`` / ``recsys-batch fetch-jars``), so sessions start with no network;
     on an air-gapped cluster point it at a pre-fetched folder;
  3. ``spark.jars_packages`` (a cluster with network);
  4. jars already on the classpath (spark-submit ``--jars``/``--packages``): detected and used as is.
  Otherwise the session fails with a message saying how to fetch them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from recsys_batch.config import PROJECT_ROOT, SparkConfig
from recsys_batch.errors import EnvironmentProblem

log = logging.getLogger(__name__)

JARS_DIR_ENV = "RECSYS_BATCH_JARS_DIR"
DEFAULT_JARS_DIR = PROJECT_ROOT / ".jars"
#: the Maven coordinates that match the pinned pyspark (keep in step with pyproject.toml, jars/pom.xml)
DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"
MIN_JAVA = 17
DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def java_major_version(java: str | None = None) -> int | None:
    """Major version of the ``java`` Spark will use (JAVA_HOME first, then PATH); None if none."""
    if java is None:
        home = os.environ.get("JAVA_HOME")
        java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        return None
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major  # "1.8" -> 8


def check_java() -> int:
    major = java_major_version()
    if major is None:
        raise EnvironmentProblem(
            f"Java not found: Spark 4 needs Java {MIN_JAVA} (or 21). Install it "
            f"(Debian/Ubuntu: apt-get install openjdk-17-jdk-headless) and put it on PATH or set JAVA_HOME."
        )
    if major < MIN_JAVA:
        raise EnvironmentProblem(
            f"Java {major} found, but Spark 4 needs Java {MIN_JAVA} or 21. Install openjdk-17 and set JAVA_HOME."
        )
    return major


def jars_dir(cfg: SparkConfig) -> Path:
    return Path(os.environ.get(JARS_DIR_ENV) or cfg.jars_dir or DEFAULT_JARS_DIR)


def delta_jars(folder: Path) -> list[str]:
    """Jar files in a fetched folder (empty if the folder holds no delta-spark jar)."""
    if not folder.is_dir():
        return []
    jars = sorted(str(p.resolve()) for p in folder.glob("*.jar"))
    return jars if any(Path(j).name.startswith("delta-spark_") for j in jars) else []


def _jar_settings(cfg: SparkConfig) -> dict[str, str]:
    if cfg.prefer_packages and cfg.jars_packages:
        return {"spark.jars.packages": cfg.jars_packages}
    jars = delta_jars(jars_dir(cfg))
    if jars:
        return {"spark.jars": ",".join(jars)}
    if cfg.jars_packages:
        return {"spark.jars.packages": cfg.jars_packages}
    return {}


def session_conf(cfg: SparkConfig) -> dict[str, str]:
    """Every Spark conf the factory sets (testable without starting a JVM)."""
    conf: dict[str, str] = {
        "spark.app.name": cfg.app_name,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.ui.enabled": str(cfg.ui_enabled).lower(),
        "spark.ui.showConsoleProgress": "false",  # the CLI shows its own progress
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        # Delta: small logs need few partitions to rebuild a snapshot (default 50 is slow locally)
        "spark.databricks.delta.snapshotPartitions": str(max(2, cfg.shuffle_partitions)),
        **DELTA_CONF,
    }
    if cfg.master:
        conf["spark.master"] = cfg.master
        if cfg.master.startswith("local"):
            conf["spark.driver.host"] = "127.0.0.1"
            conf["spark.driver.bindAddress"] = "127.0.0.1"
            # Python workers (mapInArrow, UDFs) must use this interpreter and its packages, not
            # whatever `python3` is first on PATH
            conf["spark.pyspark.python"] = os.environ.get("PYSPARK_PYTHON", sys.executable)
    if cfg.driver_memory and (cfg.master or "").startswith("local"):
        conf["spark.driver.memory"] = cfg.driver_memory
    conf.update(_jar_settings(cfg))
    conf.update(cfg.conf)
    return conf


def _delta_on_classpath(spark) -> bool:  # noqa: ANN001
    """Delta given to spark-submit (--jars / --packages) or already on the JVM's classpath."""
    conf = spark.sparkContext.getConf()
    if "delta-spark" in conf.get("spark.jars", "") or "io.delta" in conf.get("spark.jars.packages", ""):
        return True
    try:
        loader = spark.sparkContext._jvm.java.lang.Thread.currentThread().getContextClassLoader()
        loader.loadClass("io.delta.sql.DeltaSparkSessionExtension")
        return True
    except Exception:  # noqa: BLE001 - py4j raises its own error type
        return False


def get_spark(cfg: SparkConfig):  # noqa: ANN201 - pyspark imported lazily
    """Build (or return the active) SparkSession with Delta enabled.

    Driver-side settings (jars, memory) only take effect when this creates the JVM; under
    spark-submit they come from the command line instead.
    """
    check_java()
    from pyspark.sql import SparkSession

    conf = session_conf(cfg)
    if "spark.pyspark.python" in conf:
        # PySpark started from Python reads the worker interpreter from the environment, not the conf
        os.environ.setdefault("PYSPARK_PYTHON", conf["spark.pyspark.python"])
    has_jars = "spark.jars" in conf or "spark.jars.packages" in conf
    builder = SparkSession.builder
    for k, v in conf.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    if not has_jars and not _delta_on_classpath(spark):
        raise EnvironmentProblem(
            f"Delta Lake jars not found: no jar folder at {jars_dir(cfg)} and no spark.jars_packages. "
            f"Run `make jars` (or `recsys-batch fetch-jars`) once with network, set {JARS_DIR_ENV} to a "
            f"pre-fetched folder, or set spark.jars_packages={DELTA_PACKAGE}."
        )
    log.info("Spark %s session (%s), Delta via %s", spark.version, spark.sparkContext.master,
             "spark.jars" if "spark.jars" in conf else conf.get("spark.jars.packages", "classpath"))
    return spark


# ---- fetching the jars -----------------------------------------------------------------------------


def _artifact(name: str) -> str:
    """``parquet-hadoop-1.16.0.jar`` -> ``parquet-hadoop``."""
    return re.sub(r"-\d[\w.\-]*\.jar$", "", name)


def fetch_delta_jars(dest: Path | None = None, pom: Path | None = None) -> list[Path]:
    """Download the Delta jars with Maven into ``dest`` (default ``<project>/.jars``), once.

    Maven resolves the transitive closure; jars that pyspark already ships (hadoop, parquet, jackson,
    scala, log4j, ...) are left out so the classpath holds one version of each.
    """
    import pyspark

    dest = Path(dest or DEFAULT_JARS_DIR)
    pom = Path(pom or PROJECT_ROOT / "jars" / "pom.xml")
    if delta_jars(dest):
        log.info("Delta jars already in %s", dest)
        return sorted(dest.glob("*.jar"))
    mvn = shutil.which("mvn")
    if not mvn:
        raise EnvironmentProblem(
            "Maven (mvn) is needed once to fetch the Delta jars (apt-get install maven), or copy a pre-fetched "
            f"jar folder and set {JARS_DIR_ENV}."
        )
    staging = dest.with_name(dest.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
           f"-DoutputDirectory={staging.resolve()}", "-DincludeScope=runtime"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise EnvironmentProblem(f"mvn failed to fetch the Delta jars ({' '.join(cmd)}):\n{res.stdout[-3000:]}")
    shipped = {_artifact(p.name) for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    dest.mkdir(parents=True, exist_ok=True)
    kept = []
    for jar in sorted(staging.glob("*.jar")):
        if _artifact(jar.name) not in shipped:
            shutil.copy2(jar, dest / jar.name)
            kept.append(dest / jar.name)
    shutil.rmtree(staging, ignore_errors=True)
    if not delta_jars(dest):
        raise EnvironmentProblem(f"mvn ran but no delta-spark jar landed in {dest}")
    return kept


# ---- shipping the package to executors -------------------------------------------------------------


def build_pyfiles_zip(out_dir: Path | str = "dist") -> Path:
    """Zip the ``recsys_batch`` package for ``spark-submit --py-files`` (pure Python, so a zip is enough).

    Executors still need the third-party dependencies (numpy, scipy, pyarrow, ...): on a cluster
    either install them on the nodes or ship a packed environment with ``--archives`` (venv-pack /
    conda-pack) and point ``spark.pyspark.python`` at it.
    """
    import zipfile

    import recsys_batch

    pkg = Path(recsys_batch.__file__).resolve().parent
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"recsys_batch-{recsys_batch.__version__}.zip"
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(pkg.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix in (".py", ".yaml", ".json", ".typed"):
                zf.write(f, f.relative_to(pkg.parent).as_posix())
    tmp.replace(target)
    return target
