"""Deterministic synthetic raw log in the input contract (numpy + pyarrow only, no Spark).

:func:`generate_synthetic` writes, for each day ``D`` of ``[end_date - days + 1, end_date]``::

    {out_root}/events/dt=D/part-00000.parquet      that day's events (impression, click, like, ...)
    {out_root}/users/dt=D/part-00000.parquet       full snapshot: users registered up to the end of D
    {out_root}/items/dt=D/part-00000.parquet       full snapshot: items published up to the end of D
    {out_root}/follows/dt=D/part-00000.parquet     that day's follows
    {out_root}/rank_logs/dt=D/part-00000.parquet   that day's recall -> prerank -> rank candidates
    {out_root}/_truth/user_clusters.parquet        planted truth: user_id, cluster
    {out_root}/_truth/item_clusters.parquet        planted truth: item_id, cluster, category, author_id
    {out_root}/_truth/bad_events.parquet           planted contract violations: dt, kind, n_rows

Columns and types follow :data:`recsys_batch.schemas.CONTRACT` (see :func:`arrow_schema`); every
column is written nullable because the raw log is allowed to break the contract (ingest decides).

What it plants (all rates are :class:`SyntheticOptions` defaults or :class:`GenerateConfig` fields):

- ``n_clusters`` latent interest clusters. Each item belongs to one cluster; its category, author and
  2-4 tags are drawn from that cluster's own categories (``c % n_clusters``), authors
  (``a % n_clusters``) and tag pool, so they are cluster-specific. Each user has one primary cluster;
  age and gender lean by cluster.
- Popularity: Zipf ``(rank + 1) ** -zipf_exponent`` over a random ranking of the items of a cluster.
  ``fresh_item_ratio`` (20%) of items are published during the simulated days, the rest 30-730 days
  before; an item's weight is multiplied by ``1 + fresh_boost * exp(-age_days / fresh_boost_days)``.
  An item can be shown from the day after it is published (so the last day's new items are cold).
- Users: activity ~ lognormal with mean 1 (sigma ``activity_sigma``: a few heavy users),
  ``new_user_ratio`` register during the simulated days. Each day a share ``daily_active_ratio`` of the
  registered users is active and gets Poisson(``impressions_per_user_day * activity``) impressions, in
  requests of ``request_size`` positions. Each slot comes from the user's cluster with probability
  ``in_cluster_ratio`` (else from global popularity); an item appears once per request.
- Funnel: click with ``ctr_in_cluster`` (0.12) when item and user share a cluster, else
  ``ctr_out_cluster`` (0.03), times a position bias ``1 / (1 + 0.15 * position)`` normalised to mean 1.
  A click is followed by like 0.25, collect 0.08, share 0.03, comment 0.05 (independent). Each event is
  its own row; impression < click < engagement in time. ``watch_time_s`` is set on clicks of videos
  (``<= duration_s``), null elsewhere.
- follows: a click leads to following the item's author with ``follow_per_click`` (mostly own cluster).
- rank_logs: for ``rank_log_ratio`` of requests, ``n_recall`` candidates: the shown items pass all
  three stages; the others are recalled (``recall`` passed=true), ``prerank_keep`` survive prerank
  (in-cluster candidates are preferred) and are cut at ``rank`` (passed=false); the rest are cut at
  ``prerank`` (passed=false, no ``rank`` row).
- Contract violations in events: per day ``k = max(1, round(bad_row_ratio * clean_rows / 6))`` rows of
  each kind in :data:`BAD_KINDS` (null user_id, null item_id, event_type ``"clik"``, ts 1-3 days after
  the end of the day, negative watch_time_s, exact duplicate of a clean row); each is a copy of a
  different clean row with one defect, and the counts are written to ``_truth/bad_events.parquet``.

Deterministic for ``(seed, end_date, days, sizes)``: the world (users, items) comes from
``SeedSequence(seed, spawn_key=(0,))`` and each day from ``SeedSequence(seed, spawn_key=(1, ordinal))``,
so a day does not depend on the order days are generated in. Re-running overwrites each day's folder.

Cost: O(events) numpy work per day plus one Python string format per request and per user/item; the
defaults (3000 users, 2000 items, 14 days, ~0.4M event rows) take a few seconds on one core.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import types as T  # type objects only: no JVM is started

from recsys_batch.config import GenerateConfig
from recsys_batch.schemas import CONTRACT, Col

log = logging.getLogger(__name__)

TABLES = ("events", "users", "items", "follows", "rank_logs")
EVENT_TYPES = ("impression", "click", "like", "collect", "share", "comment")
#: the misspelt event type planted as ``unknown_event_type``
BAD_EVENT_TYPE = "clik"
BAD_KINDS = ("null_user", "null_item", "unknown_event_type", "future_ts", "negative_watch", "duplicate")
MEDIA_TYPES = ("video", "note", "product")
TRUTH_DIR = "_truth"
PART_FILE = "part-00000.parquet"

US = 1_000_000  # microseconds per second
DAY_US = 86_400 * US
_GEOHASH_ALPHABET = np.array(list("0123456789bcdefghjkmnpqrstuvwxyz"))
_CITIES = (  # (name, 4-char geohash prefix, weight)
    ("beijing", "wx4g", 0.20), ("shanghai", "wtw3", 0.20), ("guangzhou", "ws0e", 0.12),
    ("shenzhen", "ws10", 0.12), ("chengdu", "wm6n", 0.10), ("hangzhou", "wtmk", 0.08),
    ("wuhan", "wt3q", 0.08), ("xian", "wqj6", 0.05), ("nanjing", "wtsq", 0.05),
)
_TOPICS = ("food", "travel", "fitness", "beauty", "tech", "gaming", "music", "pets",
           "fashion", "home", "finance", "kids", "cars", "books", "movies", "outdoors")
_OCCUPATIONS = ("student", "engineer", "teacher", "designer", "sales", "doctor", "freelancer",
                "civil_servant", "retired", "other")
_DEVICE_OS = (("android", 0.55), ("ios", 0.40), ("harmonyos", 0.05))


@dataclass(frozen=True)
class SyntheticOptions:
    """Rates of the generator that :class:`GenerateConfig` does not (yet) expose."""

    ctr_in_cluster: float = 0.12
    ctr_out_cluster: float = 0.03
    p_like: float = 0.25
    p_collect: float = 0.08
    p_share: float = 0.03
    p_comment: float = 0.05
    request_size: int = 10
    fresh_item_ratio: float = 0.2
    fresh_boost: float = 3.0
    fresh_boost_days: float = 2.0
    new_user_ratio: float = 0.05
    activity_sigma: float = 1.0
    tags_per_cluster: int = 8
    media_probs: tuple[float, float, float] = (0.5, 0.35, 0.15)
    follow_per_click: float = 0.02
    rank_log_ratio: float = 0.1
    n_recall: int = 40
    prerank_keep: int = 20
    #: share of extra (non-shown) recall candidates drawn from the user's cluster
    recall_in_cluster: float = 0.6


# --------------------------------------------------------------------------------------------------
# schemas


def _to_arrow(dtype: T.DataType) -> pa.DataType:
    if isinstance(dtype, T.ArrayType):
        return pa.list_(_to_arrow(dtype.elementType))
    simple = {
        T.StringType: pa.string(), T.TimestampType: pa.timestamp("us", tz="UTC"), T.DoubleType: pa.float64(),
        T.IntegerType: pa.int32(), T.LongType: pa.int64(), T.BooleanType: pa.bool_(), T.DateType: pa.date32(),
    }
    for cls, arrow_type in simple.items():
        if isinstance(dtype, cls):
            return arrow_type
    raise TypeError(f"no Arrow type for Spark type {dtype!r}")


def arrow_schema(table: str) -> pa.Schema:
    """The raw-file Arrow schema of a contract table (``schemas.CONTRACT``), every field nullable."""
    return pa.schema([pa.field(f.name, _to_arrow(f.dataType), nullable=True) for f in CONTRACT[table].fields])


# --------------------------------------------------------------------------------------------------
# the world: users and items, fixed for a (seed, start date)


@dataclass(frozen=True)
class _World:
    n_clusters: int
    user_ids: pa.Array
    user_cluster: np.ndarray
    user_activity: np.ndarray
    user_register_us: np.ndarray
    users: pa.Table
    item_ids: pa.Array
    item_cluster: np.ndarray
    item_author: np.ndarray
    item_weight: np.ndarray
    item_publish_us: np.ndarray
    item_video: np.ndarray
    item_duration: np.ndarray
    items: pa.Table
    author_ids: pa.Array
    item_truth: pa.Table
    user_truth: pa.Table


def _day_start_us(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * US


def _members(n: int, k: int, n_clusters: int) -> np.ndarray:
    """Ids ``x < n`` owned by cluster ``k`` (``x % n_clusters == k``), or a shared one if n < n_clusters."""
    own = np.arange(k, n, n_clusters)
    return own if len(own) else np.array([k % n])


def _geohashes(rng: np.random.Generator, prefixes: np.ndarray) -> list[str]:
    tails = _GEOHASH_ALPHABET[rng.integers(0, 32, size=(len(prefixes), 2))]
    return [p + a + b for p, (a, b) in zip(prefixes, tails, strict=True)]


def _ts_array(us: np.ndarray) -> pa.Array:
    return pa.array(us.astype(np.int64), type=pa.timestamp("us", tz="UTC"))


def _build_world(cfg: GenerateConfig, start: date, end: date, opts: SyntheticOptions) -> _World:
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
    k_n = cfg.n_clusters
    start_us, end_us = _day_start_us(start), _day_start_us(end) + DAY_US
    topic = [_TOPICS[k % len(_TOPICS)] + (str(k // len(_TOPICS)) if k >= len(_TOPICS) else "") for k in range(k_n)]
    city_names = np.array([c[0] for c in _CITIES])
    city_prefix = np.array([c[1] for c in _CITIES])
    city_p = np.array([c[2] for c in _CITIES])
    city_p = city_p / city_p.sum()

    # authors and categories are owned by cluster x % n_clusters
    author_ids = pa.array([f"a{a:04d}" for a in range(cfg.n_authors)])
    author_city = rng.choice(len(_CITIES), size=cfg.n_authors, p=city_p)
    category_names = [f"{topic[c % k_n]}-{c // k_n}" for c in range(cfg.n_categories)]
    tag_pool = np.array([[f"{topic[k]}_t{j}" for j in range(opts.tags_per_cluster)] for k in range(k_n)])

    # ---- items
    n_i = cfg.n_items
    item_cluster = rng.integers(0, k_n, size=n_i)
    item_weight = np.empty(n_i)
    item_author = np.empty(n_i, dtype=np.int64)
    item_category = np.empty(n_i, dtype=np.int64)
    for k in range(k_n):
        idx = np.flatnonzero(item_cluster == k)
        item_weight[idx] = (rng.permutation(len(idx)) + 1.0) ** -cfg.zipf_exponent
        authors, cats = _members(cfg.n_authors, k, k_n), _members(cfg.n_categories, k, k_n)
        item_author[idx] = authors[rng.integers(0, len(authors), size=len(idx))]
        item_category[idx] = cats[rng.integers(0, len(cats), size=len(idx))]
    fresh = rng.random(n_i) < opts.fresh_item_ratio
    item_publish_us = np.where(
        fresh,
        rng.integers(start_us, end_us, size=n_i),
        start_us - (rng.uniform(30, 730, size=n_i) * DAY_US).astype(np.int64),
    )
    media = rng.choice(len(MEDIA_TYPES), size=n_i, p=np.array(opts.media_probs) / sum(opts.media_probs))
    item_video = media == MEDIA_TYPES.index("video")
    duration = np.round(np.clip(rng.lognormal(math.log(60.0), 0.8, size=n_i), 5.0, 1800.0), 1)
    item_duration = np.where(item_video, duration, np.nan)
    n_tags = rng.integers(2, 5, size=n_i)
    tag_order = np.argsort(rng.random((n_i, opts.tags_per_cluster)), axis=1)
    tags = [list(tag_pool[item_cluster[i], tag_order[i, : n_tags[i]]]) for i in range(n_i)]
    item_ids = pa.array([f"i{i:05d}" for i in range(n_i)])
    item_city = author_city[item_author]
    items = pa.Table.from_arrays(
        [
            item_ids,
            author_ids.take(pa.array(item_author)),
            pa.array([category_names[c] for c in item_category]),
            pa.array(tags, type=pa.list_(pa.string())),
            _ts_array(item_publish_us),
            pa.array([MEDIA_TYPES[m] for m in media]),
            pa.array(item_duration, mask=np.isnan(item_duration)),
            pa.array(_geohashes(rng, city_prefix[item_city])),
            pa.array(city_names[item_city]),
            pa.array([f"{category_names[item_category[i]]} {tags[i][0]} #{i}" for i in range(n_i)]),
        ],
        schema=arrow_schema("items"),
    )

    # ---- users
    n_u = cfg.n_users
    user_cluster = rng.integers(0, k_n, size=n_u)
    sigma = opts.activity_sigma
    user_activity = np.minimum(rng.lognormal(-sigma * sigma / 2, sigma, size=n_u), 50.0)
    new_user = rng.random(n_u) < opts.new_user_ratio
    user_register_us = np.where(
        new_user,
        rng.integers(start_us, end_us, size=n_u),
        start_us - (rng.uniform(1, 3 * 365, size=n_u) * DAY_US).astype(np.int64),
    )
    p_female = rng.uniform(0.25, 0.75, size=k_n)[user_cluster]
    gender_draw = rng.random(n_u)
    gender = np.where(gender_draw < 0.03, None, np.where(rng.random(n_u) < p_female, "F", "M"))
    age = np.clip(np.round(rng.normal(rng.uniform(20, 45, size=k_n)[user_cluster], 8.0)), 14, 75).astype(np.int32)
    user_city = rng.choice(len(_CITIES), size=n_u, p=city_p)
    os_p = np.array([p for _, p in _DEVICE_OS])
    device = rng.choice(len(_DEVICE_OS), size=n_u, p=os_p / os_p.sum())
    occupation = rng.integers(0, len(_OCCUPATIONS), size=n_u)
    user_ids = pa.array([f"u{u:06d}" for u in range(n_u)])
    users = pa.Table.from_arrays(
        [
            user_ids,
            pa.array(list(gender), type=pa.string()),
            pa.array(age),
            pa.array(city_names[user_city]),
            pa.array(_geohashes(rng, city_prefix[user_city])),
            _ts_array(user_register_us),
            pa.array([_DEVICE_OS[d][0] for d in device]),
            pa.array([_OCCUPATIONS[o] for o in occupation]),
        ],
        schema=arrow_schema("users"),
    )

    user_truth = pa.table({Col.USER: user_ids, "cluster": pa.array(user_cluster.astype(np.int32))})
    item_truth = pa.table({
        Col.ITEM: item_ids, "cluster": pa.array(item_cluster.astype(np.int32)),
        Col.CATEGORY: items.column(Col.CATEGORY), Col.AUTHOR: items.column(Col.AUTHOR),
    })
    return _World(
        n_clusters=k_n, user_ids=user_ids, user_cluster=user_cluster, user_activity=user_activity,
        user_register_us=user_register_us, users=users, item_ids=item_ids, item_cluster=item_cluster,
        item_author=item_author, item_weight=item_weight, item_publish_us=item_publish_us,
        item_video=item_video, item_duration=item_duration, items=items, author_ids=author_ids,
        item_truth=item_truth, user_truth=user_truth,
    )


# --------------------------------------------------------------------------------------------------
# one day


class _Sampler:
    """Draws items by the day's popularity, from one cluster or from all available items."""

    def __init__(self, world: _World, day_start: int, opts: SyntheticOptions):
        avail = world.item_publish_us < day_start
        age_days = (day_start - world.item_publish_us) / DAY_US
        boost = 1.0 + opts.fresh_boost * np.exp(-np.maximum(age_days, 0) / opts.fresh_boost_days)
        weight = world.item_weight * boost
        self._pools: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for k in range(world.n_clusters):
            self._pools[k] = self._pool(np.flatnonzero(avail & (world.item_cluster == k)), weight)
        self._pools[-1] = self._pool(np.flatnonzero(avail), weight)
        if len(self._pools[-1][0]) == 0:
            raise ValueError("no item is published before the first simulated day; raise n_items")

    @staticmethod
    def _pool(idx: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cdf = np.cumsum(weight[idx])
        return idx, cdf / cdf[-1] if len(cdf) else cdf

    def draw(self, rng: np.random.Generator, cluster: np.ndarray) -> np.ndarray:
        """One item per entry of ``cluster`` (-1 = global popularity); an empty cluster falls back to global."""
        out = np.empty(len(cluster), dtype=np.int64)
        u = rng.random(len(cluster))
        for k in np.unique(cluster):
            sel = cluster == k
            idx, cdf = self._pools[int(k)]
            if len(idx) == 0:
                idx, cdf = self._pools[-1]
            out[sel] = idx[np.minimum(np.searchsorted(cdf, u[sel], side="right"), len(idx) - 1)]
        return out


def _dup_mask(group: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    """True where (group, item) already occurred earlier in the array."""
    _, first = np.unique(group.astype(np.int64) * n_items + item, return_index=True)
    dup = np.ones(len(item), dtype=bool)
    dup[first] = False
    return dup


def _simulate_day(world: _World, cfg: GenerateConfig, opts: SyntheticOptions, d: date
                  ) -> tuple[dict[str, pa.Table], dict[str, int]]:
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1, d.toordinal())))
    day_start = _day_start_us(d)
    day_end = day_start + DAY_US
    n_items = len(world.item_cluster)
    sampler = _Sampler(world, day_start, opts)
    ymd = d.strftime("%Y%m%d")
    size = opts.request_size

    # ---- who is active, how many impressions, in which requests
    eligible = world.user_register_us < day_start
    active = np.flatnonzero(eligible & (rng.random(len(eligible)) < cfg.daily_active_ratio))
    n_imp = np.minimum(rng.poisson(cfg.impressions_per_user_day * world.user_activity[active]), 50 * size)
    active, n_imp = active[n_imp > 0], n_imp[n_imp > 0]
    n_req = -(-n_imp // size)
    req_user = np.repeat(active, n_req)
    req_first = np.concatenate([[0], np.cumsum(n_req)[:-1]])
    req_k = np.arange(len(req_user)) - np.repeat(req_first, n_req)
    req_ts = day_start + rng.integers(0, (86_400 - 3_600) * US, size=len(req_user))
    req_ts = req_ts[np.lexsort((req_ts, req_user))]  # requests of a user numbered in time order
    req_names = pa.array([f"r{ymd}-{u:06d}-{k:03d}" for u, k in zip(req_user, req_k, strict=True)],
                         type=pa.string())

    imp_first = np.concatenate([[0], np.cumsum(n_imp)[:-1]])
    k_in_user = np.arange(int(n_imp.sum())) - np.repeat(imp_first, n_imp)
    imp_user = np.repeat(active, n_imp)
    imp_req = np.repeat(req_first, n_imp) + k_in_user // size
    imp_pos = (k_in_user % size).astype(np.int32)
    imp_ts = req_ts[imp_req] + imp_pos.astype(np.int64) * 100_000  # 100 ms between positions

    # ---- which items: own cluster with in_cluster_ratio, else global popularity; unique per request
    u_cluster = world.user_cluster[imp_user]
    src = np.where(rng.random(len(imp_user)) < cfg.in_cluster_ratio, u_cluster, -1)
    imp_item = sampler.draw(rng, src)
    for _ in range(5):
        dup = _dup_mask(imp_req, imp_item, n_items)
        if not dup.any():
            break
        imp_item[dup] = sampler.draw(rng, np.full(int(dup.sum()), -1))
    keep = ~_dup_mask(imp_req, imp_item, n_items)  # the rare leftovers leave a gap in the request
    imp_user, imp_req, imp_pos, imp_ts, imp_item = (
        a[keep] for a in (imp_user, imp_req, imp_pos, imp_ts, imp_item))
    in_cluster = world.item_cluster[imp_item] == world.user_cluster[imp_user]

    # ---- funnel
    bias = 1.0 / (1.0 + 0.15 * np.arange(size))
    bias /= bias.mean()
    ctr = np.where(in_cluster, opts.ctr_in_cluster, opts.ctr_out_cluster) * bias[imp_pos]
    ci = np.flatnonzero(rng.random(len(imp_item)) < np.minimum(ctr, 1.0))
    click_ts = imp_ts[ci] + US + (np.minimum(rng.exponential(8.0, size=len(ci)), 120.0) * US).astype(np.int64)
    frac = np.where(in_cluster[ci], rng.beta(3.0, 2.0, size=len(ci)), rng.beta(1.5, 3.0, size=len(ci)))
    watch = np.round(world.item_duration[imp_item[ci]] * frac, 1)  # NaN for non-video items
    dwell = np.where(np.isnan(watch), 20.0, watch)

    rows_src = [np.arange(len(imp_item)), ci]
    rows_type = [np.zeros(len(imp_item), np.int8), np.ones(len(ci), np.int8)]
    rows_ts = [imp_ts, click_ts]
    rows_watch = [np.full(len(imp_item), np.nan), watch]
    for code, p in ((2, opts.p_like), (3, opts.p_collect), (4, opts.p_share), (5, opts.p_comment)):
        hit = rng.random(len(ci)) < p
        rows_src.append(ci[hit])
        rows_type.append(np.full(int(hit.sum()), code, np.int8))
        delay_s = dwell[hit] * rng.uniform(0.5, 1.0, int(hit.sum())) + 1.0
        rows_ts.append(click_ts[hit] + (delay_s * US).astype(np.int64))
        rows_watch.append(np.full(int(hit.sum()), np.nan))
    ev_src = np.concatenate(rows_src)
    ev_type = np.concatenate(rows_type)
    ev_ts = np.concatenate(rows_ts)
    ev_watch = np.concatenate(rows_watch)
    ev_user_ok = np.ones(len(ev_src), dtype=bool)
    ev_item_ok = np.ones(len(ev_src), dtype=bool)

    # ---- planted contract violations: k rows per kind, each a copy of a distinct clean row
    n_clean = len(ev_src)
    k_bad = max(1, round(cfg.bad_row_ratio * n_clean / len(BAD_KINDS))) if cfg.bad_row_ratio > 0 else 0
    k_bad = min(k_bad, n_clean // len(BAD_KINDS))
    bad_counts = dict.fromkeys(BAD_KINDS, k_bad)
    if k_bad:
        pick = rng.choice(n_clean, size=k_bad * len(BAD_KINDS), replace=False)
        b_type, b_ts, b_watch = ev_type[pick].copy(), ev_ts[pick].copy(), ev_watch[pick].copy()
        b_user_ok, b_item_ok = np.ones(len(pick), bool), np.ones(len(pick), bool)
        part = {kind: slice(j * k_bad, (j + 1) * k_bad) for j, kind in enumerate(BAD_KINDS)}
        b_user_ok[part["null_user"]] = False
        b_item_ok[part["null_item"]] = False
        b_type[part["unknown_event_type"]] = len(EVENT_TYPES)  # -> BAD_EVENT_TYPE
        b_ts[part["future_ts"]] = day_end + rng.integers(DAY_US, 3 * DAY_US, size=k_bad)
        b_watch[part["negative_watch"]] = -np.round(rng.uniform(1.0, 60.0, size=k_bad), 1)
        ev_src = np.concatenate([ev_src, ev_src[pick]])
        ev_type = np.concatenate([ev_type, b_type])
        ev_ts = np.concatenate([ev_ts, b_ts])
        ev_watch = np.concatenate([ev_watch, b_watch])
        ev_user_ok = np.concatenate([ev_user_ok, b_user_ok])
        ev_item_ok = np.concatenate([ev_item_ok, b_item_ok])

    order = np.argsort(ev_ts, kind="stable")
    ev_src, ev_type, ev_ts, ev_watch = ev_src[order], ev_type[order], ev_ts[order], ev_watch[order]
    ev_user_ok, ev_item_ok = ev_user_ok[order], ev_item_ok[order]
    events = pa.Table.from_arrays(
        [
            world.user_ids.take(pa.array(imp_user[ev_src], mask=~ev_user_ok)),
            world.item_ids.take(pa.array(imp_item[ev_src], mask=~ev_item_ok)),
            pa.array((*EVENT_TYPES, BAD_EVENT_TYPE)).take(pa.array(ev_type)),
            _ts_array(ev_ts),
            pa.array(ev_watch, mask=np.isnan(ev_watch)),
            req_names.take(pa.array(imp_req[ev_src])),
            pa.array(imp_pos[ev_src]),
        ],
        schema=arrow_schema("events"),
    )

    # ---- follows: a click sometimes follows the item's author (once per user and author a day)
    fo = ci[rng.random(len(ci)) < opts.follow_per_click]
    fo_ts = click_ts[np.searchsorted(ci, fo)] + 5 * US
    fo_author = world.item_author[imp_item[fo]]
    first = ~_dup_mask(imp_user[fo], fo_author, max(len(world.author_ids), 1))
    follows = pa.Table.from_arrays(
        [world.user_ids.take(pa.array(imp_user[fo][first])), world.author_ids.take(pa.array(fo_author[first])),
         _ts_array(fo_ts[first])],
        schema=arrow_schema("follows"),
    )

    rank_logs = _rank_logs(rng, world, opts, sampler, req_user, req_ts, req_names, imp_req, imp_item)
    tables = {
        "events": events,
        "users": world.users.filter(pa.array(world.user_register_us < day_end)),
        "items": world.items.filter(pa.array(world.item_publish_us < day_end)),
        "follows": follows,
        "rank_logs": rank_logs,
    }
    return tables, bad_counts


def _rank_logs(rng: np.random.Generator, world: _World, opts: SyntheticOptions, sampler: _Sampler,
               req_user: np.ndarray, req_ts: np.ndarray, req_names: pa.Array, imp_req: np.ndarray,
               imp_item: np.ndarray) -> pa.Table:
    """Candidates of a sample of requests through recall -> prerank -> rank (see module docstring)."""
    n_items = len(world.item_cluster)
    sel = np.flatnonzero(rng.random(len(req_user)) < opts.rank_log_ratio)
    shown = np.isin(imp_req, sel)
    s_req, s_item = imp_req[shown], imp_item[shown]
    n_extra = max(opts.n_recall - opts.request_size, 0)
    keep_extra = max(opts.prerank_keep - opts.request_size, 0)
    x_req = np.repeat(sel, n_extra)
    x_cluster = world.user_cluster[req_user[x_req]]
    x_item = sampler.draw(rng, np.where(rng.random(len(x_req)) < opts.recall_in_cluster, x_cluster, -1))
    for _ in range(5):  # extras must differ from the shown items and from each other
        dup = _dup_mask(np.concatenate([s_req, x_req]), np.concatenate([s_item, x_item]), n_items)[len(s_req):]
        if not dup.any():
            break
        x_item[dup] = sampler.draw(rng, np.full(int(dup.sum()), -1))
    valid = ~_dup_mask(np.concatenate([s_req, x_req]), np.concatenate([s_item, x_item]), n_items)[len(s_req):]
    score = (world.item_cluster[x_item] == x_cluster) + rng.random(len(x_item))
    score = np.where(valid, score, -np.inf).reshape(len(sel), n_extra)
    rank_in_req = np.argsort(np.argsort(-score, axis=1, kind="stable"), axis=1).reshape(-1)
    x_pre = valid & (rank_in_req < keep_extra)

    c_req = np.concatenate([s_req, x_req[valid]])
    c_item = np.concatenate([s_item, x_item[valid]])
    c_shown = np.concatenate([np.ones(len(s_req), bool), np.zeros(int(valid.sum()), bool)])
    c_pre = np.concatenate([np.ones(len(s_req), bool), x_pre[valid]])
    stage_rows = (  # (stage, rows that reach it, passed)
        ("recall", np.ones(len(c_req), bool), np.ones(len(c_req), bool), 300_000),
        ("prerank", np.ones(len(c_req), bool), c_pre, 200_000),
        ("rank", c_pre, c_shown, 100_000),
    )
    req = np.concatenate([c_req[m] for _, m, _, _ in stage_rows])
    item = np.concatenate([c_item[m] for _, m, _, _ in stage_rows])
    passed = np.concatenate([p[m] for _, m, p, _ in stage_rows])
    ts = np.concatenate([req_ts[c_req[m]] - lag for _, m, _, lag in stage_rows])
    stage = np.concatenate([np.full(int(m.sum()), j, np.int8) for j, (_, m, _, _) in enumerate(stage_rows)])
    order = np.lexsort((stage, req))
    req, item, passed, ts, stage = req[order], item[order], passed[order], ts[order], stage[order]
    return pa.Table.from_arrays(
        [
            req_names.take(pa.array(req)),
            world.user_ids.take(pa.array(req_user[req])),
            world.item_ids.take(pa.array(item)),
            _ts_array(ts),
            pa.array([s for s, _, _, _ in stage_rows]).take(pa.array(stage)),
            pa.array(passed),
        ],
        schema=arrow_schema("rank_logs"),
    )


# --------------------------------------------------------------------------------------------------
# entry point


def _write(table: pa.Table, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    pq.write_table(table, folder / PART_FILE)


def generate_synthetic(cfg: GenerateConfig, end_date: date, out_root: str | Path,
                       opts: SyntheticOptions | None = None) -> dict[str, int]:
    """Write the synthetic raw log for ``[end_date - cfg.days + 1, end_date]`` under ``out_root``.

    Returns the rows written per table (summed over days). See the module docstring for the layout,
    what is planted and the cost.
    """
    opts = opts or SyntheticOptions()
    out = Path(out_root)
    start = end_date - timedelta(days=cfg.days - 1)
    world = _build_world(cfg, start, end_date, opts)
    totals = dict.fromkeys(TABLES, 0)
    bad_rows: list[tuple[str, str, int]] = []
    for i in range(cfg.days):
        d = start + timedelta(days=i)
        tables, bad = _simulate_day(world, cfg, opts, d)
        for name, tbl in tables.items():
            _write(tbl, out / name / f"dt={d.isoformat()}")
            totals[name] += tbl.num_rows
        bad_rows += [(d.isoformat(), kind, n) for kind, n in bad.items()]
        log.info("synthetic %s: %s", d, {k: t.num_rows for k, t in tables.items()})

    truth = out / TRUTH_DIR
    truth.mkdir(parents=True, exist_ok=True)
    pq.write_table(world.user_truth, truth / "user_clusters.parquet")
    pq.write_table(world.item_truth, truth / "item_clusters.parquet")
    pq.write_table(
        pa.table({Col.DT: [r[0] for r in bad_rows], "kind": [r[1] for r in bad_rows],
                  "n_rows": pa.array([r[2] for r in bad_rows], pa.int64())}),
        truth / "bad_events.parquet",
    )
    return totals
