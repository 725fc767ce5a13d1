"""Input checks that need no JVM: is the day's raw batch there, readable, and big enough?

Used by the first task of the daily DAG (and ``recsys-batch check-input``) so a missing, corrupt or
truncated upstream delivery fails clearly, naming the folder or the file, before any Spark job starts.

What is opened per format:

* ``parquet``: every data file's footer (:func:`pyarrow.parquet.read_metadata`), which gives the row
  count for free and fails on a 0-byte, truncated or non-Parquet file. Cost: one small read per file.
  Corrupt pages under an intact footer are found only by ingest, which reads the data.
* ``csv`` / ``json``: every file is streamed and its non-blank lines counted (minus the header line of a
  CSV with ``header`` on); a quoted field holding newlines counts as several. Nothing is parsed here, so
  a value ingest would quarantine does not fail the check. Cost: one pass over the bytes.
* ``delta``: the table's row count from its log (``deltalake``).

Files are found as Spark finds them (:mod:`recsys_batch.io.sources`): a folder recursively, a Hadoop
glob (``*``, ``?``, ``[..]``, ``{a,b}``), names such as ``_SUCCESS`` or ``.crc`` skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

from recsys_batch.config import Config, SourceConfig
from recsys_batch.errors import EmptySource, MissingInput, SourceUnreadable
from recsys_batch.io.fs import resolve
from recsys_batch.io.sources import TEXT_FORMATS, expand_braces, has_glob, hidden_below, is_hidden, match_component

log = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass(frozen=True)
class InputCheck:
    """What ``check_input`` found (rendered like a table's stats; ``version`` is set for a Delta source)."""

    table: str
    run_date: date
    rows: int
    path: str
    files: int = 0
    version: int | None = None


def _matches(fs, pattern: str) -> list:  # noqa: ANN001 - pyarrow FileSystem
    """FileInfos of the paths a (brace-free) glob pattern matches, one listing per glob component."""
    import pyarrow.fs as pafs

    parts = pattern.split("/")
    first = next((i for i, part in enumerate(parts) if has_glob(part)), None)
    if first is None:
        info = fs.get_file_info(pattern)
        return [] if info.type == pafs.FileType.NotFound else [info]
    current = ["/".join(parts[:first]) or ("/" if pattern.startswith("/") else "")]
    for i, part in enumerate(parts[first:], start=first):
        nxt = []
        for base in current:
            if has_glob(part):
                children = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
                nxt += [c.path for c in children if match_component(c.base_name, part) and not is_hidden(c.base_name)]
            else:
                nxt.append(f"{base.rstrip('/')}/{part}")
        current = nxt
        if i < len(parts) - 1:  # an inner component must be a folder to go on
            current = [p for p in current if fs.get_file_info(p).type == pafs.FileType.Directory]
    return [info for info in fs.get_file_info(current) if info.type != pafs.FileType.NotFound]


def source_files(path: str) -> tuple[object, list[tuple[str, int]]] | None:
    """(filesystem, [(path, size), ...] sorted) of the data files a source path names; None if the path
    (or glob) matches nothing."""
    import pyarrow.fs as pafs

    fs, p = resolve(path)
    found = [info for pattern in expand_braces(p) for info in _matches(fs, pattern)]
    if not found:
        return None
    files: dict[str, int] = {}
    for info in found:
        if info.type == pafs.FileType.File:
            files[info.path] = int(info.size)
            continue
        root = info.path.rstrip("/") + "/"
        for f in fs.get_file_info(pafs.FileSelector(info.path, recursive=True)):
            rel = f.path[len(root):] if f.path.startswith(root) else f.base_name
            if f.type == pafs.FileType.File and not hidden_below(rel):
                files[f.path] = int(f.size)
    return fs, sorted(files.items())


def _parquet_rows(fs, path: str, size: int, table: str) -> int:  # noqa: ANN001
    import pyarrow.parquet as pq

    if size == 0:
        raise SourceUnreadable(table, path, "the file is empty (0 bytes; an interrupted upload?)")
    try:
        with fs.open_input_file(path) as fh:
            return int(pq.read_metadata(fh).num_rows)
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError, ArrowIOError an OSError
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SourceUnreadable(table, path, "not a readable Parquet file: " + msg.replace(f"'{path}'", "the file")) \
            from None


def _text_rows(fs, path: str, header: bool, table: str) -> int:  # noqa: ANN001
    """Non-blank lines of a (possibly compressed, by extension) text file, minus a header line."""
    lines, tail = 0, b""
    try:
        with fs.open_input_stream(path, compression="detect") as fh:
            while chunk := fh.read(CHUNK):
                parts = (tail + chunk).split(b"\n")
                tail = parts.pop()
                lines += sum(1 for ln in parts if ln.strip())
    except (OSError, ValueError) as e:
        raise SourceUnreadable(table, path, str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    lines += 1 if tail.strip() else 0
    return max(lines - 1, 0) if header and lines else lines


def count_rows(src: SourceConfig, path: str, table: str = "events") -> tuple[int, int, int | None] | None:
    """(rows, data files, Delta version or None) of a source, None if its path does not exist. A file
    that cannot be read raises :class:`SourceUnreadable` naming it; a folder without data files
    :class:`EmptySource`."""
    if src.format == "delta":
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        from recsys_batch.runs import delta_rs_uri

        try:
            dt = DeltaTable(delta_rs_uri(path))
        except TableNotFoundError:
            return None
        return dt.to_pyarrow_dataset().count_rows(), len(dt.file_uris()), dt.version()
    got = source_files(path)
    if got is None:
        return None
    fs, files = got
    if not files:
        raise EmptySource(table, path, "only hidden files such as _SUCCESS, or nothing")
    if src.format in TEXT_FORMATS:
        header = src.format == "csv" and src.options.get("header", "true").lower() == "true"
        return sum(_text_rows(fs, f, header, table) for f, _ in files), len(files), None
    return sum(_parquet_rows(fs, f, size, table) for f, size in files), len(files), None


def check_input(cfg: Config, run_date: date) -> list[InputCheck]:
    """Fail unless the events batch of ``run_date`` exists, every file of it opens, and it holds at
    least ``ingest.min_event_rows`` rows. Returns what was found (the run record is written by the
    caller only after this returned, i.e. after the check passed)."""
    src = cfg.sources.events
    path = src.resolve(run_date, cfg.warehouse.raw_root)
    got = count_rows(src, path, "events")
    if got is None:
        raise MissingInput(f"events for {run_date} have not arrived: {path} does not exist")
    rows, n_files, version = got
    if rows < cfg.ingest.min_event_rows:
        raise MissingInput(f"events for {run_date} at {path} hold {rows:,} rows in {n_files:,} file(s), fewer "
                           f"than ingest.min_event_rows={cfg.ingest.min_event_rows:,}: the delivery looks truncated")
    log.info("events for %s: %s rows in %s file(s) at %s", run_date, f"{rows:,}", f"{n_files:,}", path)
    return [InputCheck("events", run_date, rows, path, n_files, version)]
