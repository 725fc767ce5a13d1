"""Small files and folders of the warehouse through Hadoop's FileSystem (local, hdfs://, s3a://, ...).

The feature spec, the coverage report and the sample shard folders are not Delta tables. They are
written through the JVM's ``org.apache.hadoop.fs.FileSystem`` of the path's scheme, so a local root and a
Hadoop URI behave the same and nothing needs a local mount. On object stores (s3a) a "rename" is a
copy + delete: :func:`replace_dir` is then not atomic, but a reader that lists ``part-*.parquet`` after
the ``_SUCCESS`` marker only ever sees a complete folder.
"""

from __future__ import annotations

from pyspark.sql import SparkSession


def _fs(spark: SparkSession, path: str):  # noqa: ANN202 - py4j objects
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def write_text(spark: SparkSession, path: str, text: str) -> None:
    """Write (overwrite) a UTF-8 text file; parent folders are created."""
    fs, hpath = _fs(spark, path)
    out = fs.create(hpath, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()


def read_text(spark: SparkSession, path: str) -> str:
    fs, hpath = _fs(spark, path)
    jvm = spark.sparkContext._jvm
    stream = fs.open(hpath)
    try:
        data = jvm.org.apache.commons.io.IOUtils.toByteArray(stream)
    finally:
        stream.close()
    return bytes(data).decode("utf-8")


def delete(spark: SparkSession, path: str) -> None:
    fs, hpath = _fs(spark, path)
    if fs.exists(hpath):
        fs.delete(hpath, True)


def list_names(spark: SparkSession, folder: str) -> list[str]:
    """File names directly under ``folder`` (sorted; empty if it does not exist)."""
    fs, hpath = _fs(spark, folder)
    if not fs.exists(hpath):
        return []
    return sorted(st.getPath().getName() for st in fs.listStatus(hpath))


def rename(spark: SparkSession, src: str, dst: str) -> None:
    fs, hsrc = _fs(spark, src)
    _, hdst = _fs(spark, dst)
    if not fs.rename(hsrc, hdst):
        raise OSError(f"could not rename {src} to {dst}")


def replace_dir(spark: SparkSession, staging: str, final: str) -> None:
    """Make ``staging`` the folder ``final``: delete the old ``final`` then rename (idempotent re-runs)."""
    fs, hfinal = _fs(spark, final)
    if fs.exists(hfinal):
        fs.delete(hfinal, True)
    parent = hfinal.getParent()
    if parent is not None and not fs.exists(parent):
        fs.mkdirs(parent)
    rename(spark, staging, final)
