"""One place that turns a warehouse path or URI into a :mod:`pyarrow.fs` filesystem, plus the small
file operations the JVM-free stages (train, index, publish) need. Never imports pyspark.

``resolve(uri) -> (filesystem, path inside it)``:

* plain paths and ``file://`` -> :class:`pyarrow.fs.LocalFileSystem`, absolute path;
* ``s3a://`` / ``s3n://`` (Hadoop spellings) -> ``s3://``; ``s3``, ``gs``/``gcs``, ``hdfs``, ``viewfs``,
  ``abfs``/``abfss`` -> :meth:`pyarrow.fs.FileSystem.from_uri` (pyarrow's native clients);
* any other scheme fsspec knows (``memory://`` in the tests, ``sftp://``, ...) -> ``PyFileSystem(
  FSSpecHandler(fsspec.filesystem(scheme)))``; an unknown scheme is a :class:`RecsysBatchError`.

Filesystems are cached per (process, scheme, authority): an S3 region lookup or an HDFS connection
happens once, and a forked DataLoader worker builds its own (the AWS SDK is not fork-safe).

Kinds of filesystem (:func:`kind`) and what a write means on each:

* ``local``: POSIX. :func:`write_atomic` = temp file in the same folder + fsync + ``os.replace``;
  :func:`write_new` = temp + ``os.link`` (fails if the name exists); :func:`rename_dir` = ``os.replace``.
* ``object`` (s3, gs, abfs, memory): no directories, no rename. An object appears whole when its upload
  completes, so :func:`write_atomic` / :func:`write_new` are a single PUT (a reader sees the old or the
  new object, never a mix); :func:`makedirs` is a no-op; :func:`rename_dir` falls back to copy + delete
  (not atomic: callers must not rely on it -- publishing writes the release in place instead).
* ``hdfs`` (hdfs, viewfs): temp file + rename. A rename to a *fresh* name is one atomic NameNode
  operation; pyarrow's ``move`` over an *existing* file is delete + rename (a reader can briefly see no
  file), so :func:`write_atomic` there is "old, nothing or new, never partial".
* ``other`` (any other fsspec protocol): as ``hdfs``, with whatever ``mv`` means there.

Costs: every call is one or a few metadata requests (stat / list) plus the bytes moved; reads and
copies stream in 1 MiB chunks except :func:`read_bytes` (whole file in memory).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

from pyarrow import fs as pafs

from recsys_batch.errors import RecsysBatchError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
Kind = Literal["local", "object", "hdfs", "other"]
PathLike = str | os.PathLike

_ALIASES = {"s3a": "s3", "s3n": "s3"}
_NATIVE = {"s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"}
_OBJECT = {"s3", "gs", "gcs", "abfs", "abfss", "az", "adl", "memory", "oss", "r2"}
_HDFS = {"hdfs", "viewfs"}

_LOCAL = pafs.LocalFileSystem()
_CACHE: dict[tuple[int, str, str], tuple[pafs.FileSystem, str]] = {}
_LOCK = threading.Lock()


class Digest(NamedTuple):
    sha256: str
    size: int


def _s(uri: PathLike) -> str:
    return os.fspath(uri)


def scheme(uri: PathLike) -> str:
    """Lower-case scheme with Hadoop aliases mapped (``s3a`` -> ``s3``); ``""`` for a plain path or ``file://``."""
    u = _s(uri)
    if "://" not in u:
        return ""
    sch = u.split("://", 1)[0].lower()
    return "" if sch == "file" else _ALIASES.get(sch, sch)


def kind(uri: PathLike) -> Kind:
    """``local`` / ``object`` / ``hdfs`` / ``other`` (see the module docstring for what each means)."""
    sch = scheme(uri)
    if not sch:
        return "local"
    if sch in _OBJECT:
        return "object"
    return "hdfs" if sch in _HDFS else "other"


def _native(sch: str, uri: str) -> tuple[pafs.FileSystem, str] | None:
    """(filesystem, path) through pyarrow's own client, cached per scheme + authority; None if this
    pyarrow build does not know the scheme."""
    parts = urlsplit(uri)
    key = (os.getpid(), sch, parts.netloc + ("?" + parts.query if parts.query else ""))
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is None:
        root_uri = f"{sch}://{parts.netloc}/" + ("?" + parts.query if parts.query else "")
        try:
            hit = pafs.FileSystem.from_uri(root_uri)
        except Exception as e:  # noqa: BLE001 - re-raised with the URI below, or handed to fsspec
            if "Unrecognized filesystem type" in str(e):
                return None
            raise RecsysBatchError(f"cannot open the filesystem of {uri}: {e}") from e
        with _LOCK:
            _CACHE[key] = hit
    fs, base = hit
    tail = parts.path.strip("/")
    base = base.rstrip("/")
    if not base:  # HDFS-like: absolute paths from the namespace root
        return fs, "/" + tail
    return fs, f"{base}/{tail}" if tail else base


def _fsspec(sch: str, uri: str) -> tuple[pafs.FileSystem, str]:
    """(PyFileSystem over fsspec's implementation, path), cached per scheme + authority."""
    try:
        import fsspec
    except ImportError:
        raise RecsysBatchError(f"{uri}: scheme {sch}:// needs fsspec (pip install fsspec)") from None
    parts = urlsplit(uri)
    key = (os.getpid(), sch, parts.netloc)
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is None:
        try:
            impl, _ = fsspec.core.url_to_fs(uri)
        except (ValueError, ImportError) as e:
            raise RecsysBatchError(f"{uri}: no filesystem for scheme {sch}:// ({e})") from e
        hit = (pafs.PyFileSystem(pafs.FSSpecHandler(impl)), "")
        with _LOCK:
            _CACHE[key] = hit
    fs = hit[0]
    return fs, fs.handler.fs._strip_protocol(uri)


def resolve(uri: PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) of a local path or URI (see the module docstring). Cached; cheap."""
    u = _s(uri)
    if "://" not in u:
        return _LOCAL, str(Path(u).resolve())
    sch = scheme(u)
    if not sch:  # file://
        return _LOCAL, str(Path(urlsplit(u).path or "/").resolve())
    if u.split("://", 1)[0].lower() != sch:
        u = f"{sch}://" + u.split("://", 1)[1]
    if sch in _NATIVE:
        got = _native(sch, u)
        if got is not None:
            return got
    return _fsspec(sch, u)


def join(uri: PathLike, *parts: str) -> str:
    """``uri/part/part`` (string join with ``/``; works for local paths and URIs alike)."""
    out = _s(uri).rstrip("/") or "/"
    for p in parts:
        p = p.strip("/")
        if p:
            out = f"{out.rstrip('/')}/{p}"
    return out


def basename(uri: PathLike) -> str:
    return _s(uri).rstrip("/").rsplit("/", 1)[-1]


def _info(uri: PathLike) -> pafs.FileInfo:
    fs, p = resolve(uri)
    return fs.get_file_info(p)


def exists(uri: PathLike) -> bool:
    """One stat (HEAD / list on object stores)."""
    return _info(uri).type != pafs.FileType.NotFound


def is_dir(uri: PathLike) -> bool:
    return _info(uri).type == pafs.FileType.Directory


def is_file(uri: PathLike) -> bool:
    return _info(uri).type == pafs.FileType.File


def size(uri: PathLike) -> int:
    """Bytes of a file; FileNotFoundError naming it if absent."""
    info = _info(uri)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{_s(uri)}: no such file")
    return int(info.size)


def listdir(uri: PathLike, only: Literal["dirs", "files"] | None = None) -> list[str]:
    """Sorted names of the direct children of a folder ([] if it does not exist). One list call."""
    fs, p = resolve(uri)
    want = {"dirs": pafs.FileType.Directory, "files": pafs.FileType.File}.get(only or "")
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    return sorted(i.base_name for i in infos if want is None or i.type == want)


def walk_files(uri: PathLike) -> list[str]:
    """Sorted ``/``-separated paths, relative to ``uri``, of every file below it (one recursive list)."""
    fs, p = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True, allow_not_found=True))
    base = p.rstrip("/") + "/"
    return sorted(i.path[len(base):] if i.path.startswith(base) else i.base_name
                  for i in infos if i.type == pafs.FileType.File)


# ---- reads --------------------------------------------------------------------------------------------

def read_bytes(uri: PathLike) -> bytes:
    """The whole file in memory; FileNotFoundError if absent."""
    fs, p = resolve(uri)
    with fs.open_input_stream(p) as f:
        return f.read()


def read_text(uri: PathLike) -> str:
    return read_bytes(uri).decode("utf-8")


def read_json(uri: PathLike) -> Any:
    return json.loads(read_bytes(uri))


def sha256(uri: PathLike) -> Digest:
    """(sha256 hex, bytes) of a file, streamed in 1 MiB chunks."""
    fs, p = resolve(uri)
    h, n = hashlib.sha256(), 0
    with fs.open_input_stream(p) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return Digest(h.hexdigest(), n)


# ---- writes -------------------------------------------------------------------------------------------

def makedirs(uri: PathLike) -> None:
    """Create a folder and its parents (no-op on object stores, which have no folders)."""
    k = kind(uri)
    if k != "object":
        fs, p = resolve(uri)
        _mkdir(fs, k, p)


def _mkdir(fs: pafs.FileSystem, k: Kind, p: str) -> None:
    if k == "local":
        os.makedirs(p, exist_ok=True)
    else:
        fs.create_dir(p, recursive=True)


def _parent(p: str) -> str:
    return p.rstrip("/").rsplit("/", 1)[0] or "/"


def _tmp_name(p: str) -> str:
    parent, name = p.rstrip("/").rsplit("/", 1) if "/" in p.rstrip("/") else ("", p)
    return f"{parent}/.{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def _put(fs: pafs.FileSystem, p: str, data: bytes | bytearray | memoryview) -> None:
    """One upload of ``data`` to ``p``; on an error the (possibly committed) object is removed."""
    try:
        with fs.open_output_stream(p) as out:
            out.write(data)
    except BaseException:
        _delete_quietly(fs, p)
        raise


def _delete_quietly(fs: pafs.FileSystem, p: str) -> None:
    try:
        fs.delete_file(p)
    except Exception:  # noqa: BLE001 - best effort cleanup
        pass


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _local_tmp(p: str, data: bytes | bytearray | memoryview) -> str:
    os.makedirs(_parent(p), exist_ok=True)
    tmp = _tmp_name(p)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _data(data: bytes | bytearray | memoryview | str) -> bytes | bytearray | memoryview:
    return data.encode("utf-8") if isinstance(data, str) else data


def write_bytes(uri: PathLike, data: bytes | bytearray | memoryview | str) -> None:
    """Plain (over)write, parents created. Not atomic on local / HDFS (see :func:`write_atomic`)."""
    fs, p = resolve(uri)
    data = _data(data)
    if kind(uri) == "local":
        os.makedirs(_parent(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        return
    _make_parent(uri)
    _put(fs, p, data)


def _make_parent(uri: PathLike) -> None:
    """Create the folder a file will be written into (no-op on object stores)."""
    k = kind(uri)
    if k != "object":
        fs, p = resolve(uri)
        _mkdir(fs, k, _parent(p))


def write_text(uri: PathLike, text: str) -> None:
    write_bytes(uri, text)


def write_json(uri: PathLike, obj: Any, atomic: bool = True, **dumps: Any) -> None:
    """``json.dumps(obj, **dumps)``, atomically by default."""
    (write_atomic if atomic else write_bytes)(uri, json.dumps(obj, **dumps))


def write_atomic(uri: PathLike, data: bytes | bytearray | memoryview | str) -> None:
    """Replace ``uri`` so readers see the old or the new content, never a partial file.

    local: temp file in the same folder + fsync + ``os.replace`` + fsync of the folder; object stores: a
    single PUT; HDFS / other: temp + ``move`` (over an existing file pyarrow's HDFS move is delete +
    rename: old, nothing or new). Cost: the bytes once, plus a rename.
    """
    fs, p = resolve(uri)
    data = _data(data)
    k = kind(uri)
    if k == "local":
        tmp = _local_tmp(p, data)
        os.replace(tmp, p)
        _fsync_dir(_parent(p))
    elif k == "object":
        _put(fs, p, data)
    else:
        fs.create_dir(_parent(p), recursive=True)
        tmp = _tmp_name(p)
        _put(fs, tmp, data)
        try:
            fs.move(tmp, p)
        except BaseException:
            _delete_quietly(fs, tmp)
            raise


def write_new(uri: PathLike, data: bytes | bytearray | memoryview | str) -> None:
    """Create ``uri`` with ``data``, whole or not at all; FileExistsError if it already exists.

    local: temp + fsync + ``os.link`` (atomic create-if-absent); HDFS / other: temp + rename to the fresh
    name (atomic), after an existence check; object stores: existence check + one PUT. The checks on
    HDFS / object stores are not atomic with the write: one writer at a time is assumed there.
    """
    fs, p = resolve(uri)
    data = _data(data)
    k = kind(uri)
    if k == "local":
        tmp = _local_tmp(p, data)
        try:
            try:
                os.link(tmp, p)
            except FileExistsError:
                raise FileExistsError(f"{_s(uri)} already exists") from None
            except OSError:  # a filesystem without hard links
                if os.path.exists(p):
                    raise FileExistsError(f"{_s(uri)} already exists") from None
                os.replace(tmp, p)
        finally:
            Path(tmp).unlink(missing_ok=True)
        _fsync_dir(_parent(p))
        return
    if fs.get_file_info(p).type != pafs.FileType.NotFound:
        raise FileExistsError(f"{_s(uri)} already exists")
    if k == "object":
        _put(fs, p, data)
        return
    fs.create_dir(_parent(p), recursive=True)
    tmp = _tmp_name(p)
    _put(fs, tmp, data)
    try:
        if fs.get_file_info(p).type != pafs.FileType.NotFound:
            raise FileExistsError(f"{_s(uri)} already exists")
        fs.move(tmp, p)
    except BaseException:
        _delete_quietly(fs, tmp)
        raise


def copy_file(src: PathLike, dst: PathLike) -> Digest:
    """Stream ``src`` to ``dst`` (any two filesystems) in 1 MiB chunks; returns the (sha256, bytes) of
    what was read. Not atomic: on an error the partial ``dst`` is removed."""
    sfs, sp = resolve(src)
    dfs, dp = resolve(dst)
    _make_parent(dst)
    h, n = hashlib.sha256(), 0
    try:
        with sfs.open_input_stream(sp) as fin, dfs.open_output_stream(dp) as fout:
            while chunk := fin.read(CHUNK):
                h.update(chunk)
                n += len(chunk)
                fout.write(chunk)
    except BaseException:
        _delete_quietly(dfs, dp)
        raise
    return Digest(h.hexdigest(), n)


def upload_file(local_path: PathLike, uri: PathLike) -> Digest:
    """A local file to ``uri`` (streamed; for libraries that can only write local files)."""
    return copy_file(local_path, uri)


def download_file(uri: PathLike, local_path: PathLike) -> Digest:
    """``uri`` to a local file (streamed; for libraries that can only read local files)."""
    return copy_file(uri, local_path)


def copy_tree(src: PathLike, dst: PathLike) -> list[str]:
    """Copy every file below ``src`` to the same relative path below ``dst``; returns the relative paths."""
    files = walk_files(src)
    for rel in files:
        copy_file(join(src, rel), join(dst, rel))
    return files


def remove(uri: PathLike) -> None:
    """Delete one file; a missing one is fine."""
    fs, p = resolve(uri)
    try:
        fs.delete_file(p)
    except FileNotFoundError:
        pass


def rmtree(uri: PathLike) -> None:
    """Delete a folder (or file) and everything below it; missing is fine, other errors are logged."""
    fs, p = resolve(uri)
    if kind(uri) == "local":
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            Path(p).unlink(missing_ok=True)
        return
    try:
        t = fs.get_file_info(p).type
        if t == pafs.FileType.Directory:
            fs.delete_dir(p)
        elif t == pafs.FileType.File:
            fs.delete_file(p)
    except FileNotFoundError:
        pass
    except Exception as e:  # noqa: BLE001 - tolerant like shutil.rmtree(ignore_errors=True)
        log.warning("could not remove %s: %s", _s(uri), e)


def rename_dir(src: PathLike, dst: PathLike) -> None:
    """Rename a folder; ``dst`` must not exist (FileExistsError) -- an empty local folder is replaced.

    local: ``os.replace`` (one atomic rename(2)); HDFS: ``move`` = one atomic NameNode rename. Object
    stores and other fsspec filesystems: **fallback** copy every file, then delete ``src`` -- not atomic
    (readers can see a partial ``dst``) and it costs the bytes twice; do not build a protocol on it.
    """
    k = kind(src)
    if kind(dst) != k or scheme(src) != scheme(dst):
        raise RecsysBatchError(f"rename_dir: {_s(src)} and {_s(dst)} are on different filesystems")
    sfs, sp = resolve(src)
    _, dp = resolve(dst)
    if k == "local":
        try:
            os.replace(sp, dp)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(f"rename_dir: {_s(dst)} already exists and is not empty") from e
            raise
        return
    if sfs.get_file_info(dp).type != pafs.FileType.NotFound:
        raise FileExistsError(f"rename_dir: {_s(dst)} already exists")
    if k == "hdfs":
        sfs.move(sp, dp)
        return
    copy_tree(src, dst)
    rmtree(src)
