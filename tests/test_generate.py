"""The synthetic generator: determinism, the contract's schemas, planted bad rows and planted structure.

No Spark: everything is read back with pyarrow / pandas.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_batch.config import GenerateConfig
from recsys_batch.generate import BAD_EVENT_TYPE, BAD_KINDS, TABLES, arrow_schema, generate_synthetic
from recsys_batch.schemas import CONTRACT, Col

END = date(2026, 11, 20)
SMALL = dict(n_users=300, n_items=200, days=3, n_authors=40, n_categories=10, n_clusters=4, bad_row_ratio=0.01)
DAYS = [END - timedelta(days=i) for i in (2, 1, 0)]


def _cfg(**kw) -> GenerateConfig:
    return GenerateConfig(**{**SMALL, **kw})


def _read(root: Path, table: str, d: date) -> pa.Table:
    return pq.read_table(root / table / f"dt={d.isoformat()}" / "part-00000.parquet")


def _all(root: Path, table: str) -> pd.DataFrame:
    return pd.concat([_read(root, table, d).to_pandas().assign(dt=d) for d in DAYS], ignore_index=True)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("synthetic")
    return root, generate_synthetic(_cfg(), END, root)


@pytest.fixture(scope="module")
def events(raw) -> pd.DataFrame:
    return _all(raw[0], "events")


@pytest.fixture(scope="module")
def clean(events) -> pd.DataFrame:
    """Events without the planted bad rows (the duplicates are identical, so drop_duplicates)."""
    end_of_day = pd.to_datetime(events["dt"].astype(str)).dt.tz_localize("UTC") + pd.Timedelta(days=1)
    ok = (events[Col.USER].notna() & events[Col.ITEM].notna() & (events[Col.EVENT] != BAD_EVENT_TYPE)
          & (events[Col.TS] < end_of_day) & ~(events[Col.WATCH] < 0))
    return events[ok].drop(columns="dt").drop_duplicates()


@pytest.fixture(scope="module")
def truth(raw) -> tuple[pd.Series, pd.DataFrame]:
    users = pq.read_table(raw[0] / "_truth" / "user_clusters.parquet").to_pandas().set_index(Col.USER)["cluster"]
    items = pq.read_table(raw[0] / "_truth" / "item_clusters.parquet").to_pandas().set_index(Col.ITEM)
    return users, items


def test_layout_and_returned_counts(raw):
    root, counts = raw
    assert set(counts) == set(TABLES)
    for table in TABLES:
        assert sum(_read(root, table, d).num_rows for d in DAYS) == counts[table] > 0
        assert sorted(p.name for p in (root / table).iterdir()) == [f"dt={d.isoformat()}" for d in DAYS]


def test_schemas_follow_the_contract(raw):
    root, _ = raw
    loose = {"string": pa.string(), "timestamp": pa.timestamp("us", tz="UTC"), "double": pa.float64(),
             "int": pa.int32(), "boolean": pa.bool_(), "array<string>": pa.list_(pa.string())}
    for table in TABLES:
        schema = _read(root, table, END).schema
        assert schema.names == [f.name for f in CONTRACT[table].fields]
        assert schema.equals(arrow_schema(table))
        for f in CONTRACT[table].fields:
            assert schema.field(f.name).type == loose[f.dataType.simpleString()], (table, f.name)


def test_deterministic_and_idempotent(raw, tmp_path):
    root, counts = raw
    again = tmp_path / "again"
    junk = again / "events" / f"dt={END.isoformat()}" / "stale.parquet"
    junk.parent.mkdir(parents=True)
    junk.write_text("left over from an older run")
    assert generate_synthetic(_cfg(), END, again) == counts
    assert not junk.exists()  # the day's folder was replaced
    for table in TABLES:
        for d in DAYS:
            assert _read(again, table, d).equals(_read(root, table, d)), (table, d)
    other = tmp_path / "other"
    generate_synthetic(_cfg(seed=7), END, other)
    assert not _read(other, "events", END).equals(_read(root, "events", END))


def test_planted_bad_rows(raw, events, clean):
    planted = pq.read_table(raw[0] / "_truth" / "bad_events.parquet").to_pandas()
    assert sorted(planted["kind"].unique()) == sorted(BAD_KINDS)
    for d in DAYS:
        day = events[events["dt"] == d]
        want = planted[planted[Col.DT] == d.isoformat()].set_index("kind")["n_rows"]
        assert want.nunique() == 1  # the same k for every kind
        k = int(want.iloc[0])
        n_clean = len(day) - k * len(BAD_KINDS)
        assert k == max(1, round(0.01 * n_clean / len(BAD_KINDS)))
        end_of_day = datetime(d.year, d.month, d.day, tzinfo=UTC) + timedelta(days=1)
        got = {
            "null_user": day[Col.USER].isna().sum(),
            "null_item": day[Col.ITEM].isna().sum(),
            "unknown_event_type": (day[Col.EVENT] == BAD_EVENT_TYPE).sum(),
            "future_ts": (day[Col.TS] >= pd.Timestamp(end_of_day) + pd.Timedelta(days=1)).sum(),
            "negative_watch": (day[Col.WATCH] < 0).sum(),
            "duplicate": day.duplicated().sum(),
        }
        assert got == want.to_dict(), d
    assert len(events) - len(clean) == planted["n_rows"].sum()


def test_funnel_rates(clean):
    n = clean[Col.EVENT].value_counts()
    assert set(n.index) == {"impression", "click", "like", "collect", "share", "comment"}
    assert 0.04 < n["click"] / n["impression"] < 0.15
    assert 0.18 < n["like"] / n["click"] < 0.32
    assert 0.03 < n["collect"] / n["click"] < 0.14
    assert n["share"] / n["click"] < 0.08 and n["comment"] / n["click"] < 0.10
    # every non-impression event follows its impression in the same request and position
    imp = clean[clean[Col.EVENT] == "impression"].set_index([Col.REQUEST, Col.POSITION])
    assert not imp.index.duplicated().any()
    rest = clean[clean[Col.EVENT] != "impression"]
    joined = rest.join(imp[[Col.ITEM, Col.TS]], on=[Col.REQUEST, Col.POSITION], rsuffix="_imp")
    assert (joined[Col.ITEM] == joined[f"{Col.ITEM}_imp"]).all()
    assert (joined[Col.TS] > joined[f"{Col.TS}_imp"]).all()
    assert clean[Col.POSITION].between(0, 9).all()


def test_watch_time_only_on_video_clicks(raw, clean):
    items = _read(raw[0], "items", END).to_pandas().set_index(Col.ITEM)
    watched = clean[clean[Col.WATCH].notna()]
    assert (watched[Col.EVENT] == "click").all()
    meta = items.loc[watched[Col.ITEM]]
    assert (meta[Col.MEDIA_TYPE] == "video").all()
    assert (watched[Col.WATCH].to_numpy() <= meta[Col.DURATION].to_numpy()).all()
    video_clicks = clean[(clean[Col.EVENT] == "click")
                         & clean[Col.ITEM].map(items[Col.MEDIA_TYPE]).eq("video")]
    assert video_clicks[Col.WATCH].notna().all()


def test_popularity_is_skewed(clean, truth):
    per_item = clean[clean[Col.EVENT] == "impression"][Col.ITEM].value_counts()
    top = int(len(truth[1]) * 0.1)
    assert per_item.iloc[:top].sum() / per_item.sum() > 0.4


def test_clicks_concentrate_in_the_users_cluster(clean, truth):
    user_cluster, items = truth
    clicks = clean[clean[Col.EVENT] == "click"]
    same = clicks[Col.USER].map(user_cluster).to_numpy() == clicks[Col.ITEM].map(items["cluster"]).to_numpy()
    assert same.mean() > 0.6
    # categories and authors are cluster-specific
    assert items.groupby(Col.CATEGORY)["cluster"].nunique().max() == 1
    assert items.groupby(Col.AUTHOR)["cluster"].nunique().max() == 1


def test_fresh_items_and_snapshots(raw, clean):
    root, _ = raw
    first_day = pd.Timestamp(datetime(DAYS[0].year, DAYS[0].month, DAYS[0].day, tzinfo=UTC))
    last = _read(root, "items", END).to_pandas()
    fresh = last[last[Col.PUBLISH_TS] >= first_day]
    assert len(fresh) > 0
    assert clean[Col.ITEM].isin(fresh[Col.ITEM]).any()  # some fresh items were already shown
    # nothing is shown before it is published; snapshots only hold what exists by the end of their day
    publish = last.set_index(Col.ITEM)[Col.PUBLISH_TS]
    assert (clean[Col.TS] > clean[Col.ITEM].map(publish)).all()
    sizes = [_read(root, "items", d).num_rows for d in DAYS]
    assert sizes == sorted(sizes) and sizes[-1] == len(last)
    users = [_read(root, "users", d).to_pandas() for d in DAYS]
    assert len(users[0]) <= len(users[-1])
    for d, u in zip(DAYS, users, strict=True):
        end_of_day = pd.Timestamp(datetime(d.year, d.month, d.day, tzinfo=UTC)) + pd.Timedelta(days=1)
        assert (u[Col.REGISTER_TS] < end_of_day).all()
    assert (last[Col.TAGS].map(len).between(2, 4)).all()
    assert set(last[Col.MEDIA_TYPE]) == {"video", "note", "product"}
    assert (last[Col.GEOHASH].str.len() == 6).all() and (users[-1][Col.GEOHASH].str.len() == 6).all()


def test_follows(raw, truth):
    user_cluster, items = truth
    follows = _all(raw[0], "follows")
    assert len(follows) > 0 and follows[Col.AUTHOR].notna().all()
    author_cluster = items.drop_duplicates(Col.AUTHOR).set_index(Col.AUTHOR)["cluster"]
    own = follows[Col.USER].map(user_cluster).to_numpy() == follows[Col.AUTHOR].map(author_cluster).to_numpy()
    assert own.mean() > 0.5


def test_rank_logs_funnel(raw, clean):
    logs = _all(raw[0], "rank_logs")
    assert set(logs[Col.STAGE]) == {"recall", "prerank", "rank"}
    wide = logs.pivot_table(index=[Col.REQUEST, Col.ITEM], columns=Col.STAGE, values=Col.PASSED, aggfunc="first")
    assert wide["recall"].notna().all()  # every candidate was recalled
    cut_pre = wide["prerank"] == False  # noqa: E712 (NaN-safe comparison)
    cut_rank = wide["rank"] == False  # noqa: E712
    assert cut_pre.sum() > 0 and cut_rank.sum() > 0
    assert wide.loc[cut_pre, "rank"].isna().all()  # cut at prerank: never reaches rank
    shown = wide[wide["rank"] == True]  # noqa: E712
    imps = clean[clean[Col.EVENT] == "impression"].set_index([Col.REQUEST, Col.ITEM]).index
    logged = shown.index.get_level_values(0).unique()
    assert set(shown.index) == set(i for i in imps if i[0] in set(logged))
    assert not logs.duplicated([Col.REQUEST, Col.ITEM, Col.STAGE]).any()


def test_truth_files(raw, truth):
    user_cluster, items = truth
    assert len(user_cluster) == SMALL["n_users"] and len(items) == SMALL["n_items"]
    assert set(np.unique(user_cluster)) == set(range(SMALL["n_clusters"]))
    assert list(items.columns) == ["cluster", Col.CATEGORY, Col.AUTHOR]
