"""Column names and table schemas, declared once and used everywhere.

The *contract* schemas (``EVENTS`` ... ``RANK_LOGS``) describe the validated Delta tables the ingest
job writes; ``REQUIRED`` lists which source columns must be present (the others are nullable and
filled with null when a source lacks them). Derived tables (matrix, last-N, activity) follow.
"""

from __future__ import annotations

from pyspark.sql import types as T

from recsys_batch.columns import ITEM_PREFIX, USER_PREFIX, Col, FCol  # noqa: F401 - re-exported


def _f(name: str, dtype: T.DataType, nullable: bool = True) -> T.StructField:
    return T.StructField(name, dtype, nullable)


S, TS, D, L, I, B = T.StringType(), T.TimestampType(), T.DoubleType(), T.LongType(), T.IntegerType(), T.BooleanType()

EVENTS = T.StructType([
    _f(Col.USER, S, False), _f(Col.ITEM, S, False), _f(Col.EVENT, S, False), _f(Col.TS, TS, False),
    _f(Col.WATCH, D), _f(Col.REQUEST, S), _f(Col.POSITION, I),
])
USERS = T.StructType([
    _f(Col.USER, S, False), _f(Col.GENDER, S), _f(Col.AGE, I), _f(Col.CITY, S), _f(Col.GEOHASH, S),
    _f(Col.REGISTER_TS, TS), _f(Col.DEVICE_OS, S), _f(Col.OCCUPATION, S),
])
ITEMS = T.StructType([
    _f(Col.ITEM, S, False), _f(Col.AUTHOR, S), _f(Col.CATEGORY, S), _f(Col.TAGS, T.ArrayType(S)),
    _f(Col.PUBLISH_TS, TS), _f(Col.MEDIA_TYPE, S), _f(Col.DURATION, D), _f(Col.GEOHASH, S), _f(Col.CITY, S),
    _f(Col.TITLE, S),
])
FOLLOWS = T.StructType([_f(Col.USER, S, False), _f(Col.AUTHOR, S, False), _f(Col.TS, TS, False)])
RANK_LOGS = T.StructType([
    _f(Col.REQUEST, S, False), _f(Col.USER, S, False), _f(Col.ITEM, S, False), _f(Col.TS, TS, False),
    _f(Col.STAGE, S, False), _f(Col.PASSED, B, False),
])

#: the input contract: table -> (schema, required source columns, key columns that must not be null)
CONTRACT: dict[str, T.StructType] = {
    "events": EVENTS, "users": USERS, "items": ITEMS, "follows": FOLLOWS, "rank_logs": RANK_LOGS,
}
REQUIRED: dict[str, list[str]] = {
    "events": [Col.USER, Col.ITEM, Col.EVENT, Col.TS],
    "users": [Col.USER],
    "items": [Col.ITEM],
    "follows": [Col.USER, Col.AUTHOR, Col.TS],
    "rank_logs": [Col.REQUEST, Col.USER, Col.ITEM, Col.TS, Col.STAGE, Col.PASSED],
}
#: the timestamp column each table is checked on (unparsable / future / stale)
EVENT_TIME: dict[str, str | None] = {
    "events": Col.TS, "users": Col.REGISTER_TS, "items": Col.PUBLISH_TS, "follows": Col.TS, "rank_logs": Col.TS,
}
RANK_STAGES = ("recall", "prerank", "rank")

# ---- derived tables --------------------------------------------------------------------------------

USER_ITEM_MATRIX = T.StructType([
    _f(Col.USER, S, False), _f(Col.ITEM, S, False), _f(Col.SCORE, D, False), _f(Col.N_EVENTS, L, False),
    _f(Col.LAST_TS, TS, False),
])
LASTN_ENTRY = T.StructType([_f(Col.ITEM, S, False), _f(Col.TS, TS, False), _f(Col.WEIGHT, D, False)])
USER_LASTN = T.StructType([_f(Col.USER, S, False), _f(Col.ITEMS, T.ArrayType(LASTN_ENTRY, False), False)])
ITEM_ACTIVITY = T.StructType([
    _f(Col.ITEM, S, False), _f(Col.N_USERS, L, False), _f(Col.N_EVENTS, L, False), _f(Col.SCORE, D, False),
    _f(Col.LAST_TS, TS, False),
])
USER_ACTIVITY = T.StructType([
    _f(Col.USER, S, False), _f(Col.N_ITEMS, L, False), _f(Col.N_EVENTS, L, False), _f(Col.SCORE, D, False),
    _f(Col.LAST_TS, TS, False),
])
ID_MAP_USER = T.StructType([_f(Col.USER, S, False), _f(Col.USER_IDX, L, False)])
ID_MAP_ITEM = T.StructType([_f(Col.ITEM, S, False), _f(Col.ITEM_IDX, L, False)])


def rejected_schema(table: str) -> T.StructType:
    """Quarantine rows keep every contract column as the raw string, plus the reason and source file."""
    return T.StructType(
        [_f(f.name, S) for f in CONTRACT[table].fields] + [_f(Col.REASON, S, False), _f(Col.SOURCE_FILE, S)]
    )

# ---- similarity and recall ---------------------------------------------------------------------------

#: itemcf_topk / swing_topk: for each item its top-K neighbours, rank 1 = most similar
ITEM_SIM = T.StructType([
    _f(Col.ITEM, S, False), _f(Col.NEIGHBOR, S, False), _f(Col.SCORE, D, False), _f(Col.RANK, I, False),
])
#: usercf_topk
USER_SIM = T.StructType([
    _f(Col.USER, S, False), _f(Col.NEIGHBOR, S, False), _f(Col.SCORE, D, False), _f(Col.RANK, I, False),
])
#: recall_<channel>: top-N items per user, rank 1 = best, never an item the user already has
RECALL = T.StructType([
    _f(Col.USER, S, False), _f(Col.ITEM, S, False), _f(Col.SCORE, D, False), _f(Col.RANK, I, False),
])
RECALL_CHANNELS = ("itemcf", "swing", "usercf", "popular")
#: recall_merged: RECALL plus the channels (sorted) whose quota list held the item
RECALL_MERGED = T.StructType([*RECALL.fields, _f(Col.CHANNELS, T.ArrayType(S, False), False)])
#: exposure_bloom: one serialized Bloom filter per user of the items shown in the exposure window
#: (format and hashing: recsys_batch.recall.exposure); probes / probe_false_positives measure its FPR
EXPOSURE_BLOOM = T.StructType([
    _f(Col.USER, S, False), _f(Col.BLOOM, T.BinaryType(), False), _f(Col.N_ITEMS, L, False),
    _f(Col.M_BITS, L, False), _f(Col.K_HASHES, I, False), _f(Col.FP_RATE, D, False), _f(Col.PROBES, L, False),
    _f(Col.PROBE_HITS, L, False),
])

# ---- features and samples ------------------------------------------------------------------------------
# The feature tables' columns depend on the config (windows, media types, genders, age buckets), so their
# schemas are functions of :class:`recsys_batch.config.FeaturesConfig`. docs/features_and_samples.md
# describes every column.


#: counted event types -> plural used in column names (impressions_7d, clicks_7d, ...)
STAT_EVENTS = {"impression": "impressions", "click": "clicks", "like": "likes", "collect": "collects",
               "share": "shares", "comment": "comments"}
#: per-click engagement rates (like_rate_7d = smoothed likes / clicks)
ENGAGEMENTS = ("like", "collect", "share", "comment")
RECALL_SOURCES = ("positive", "easy", "hard")


def count_col(event: str, window_days: int) -> str:
    return f"{STAT_EVENTS[event]}_{window_days}d"


def ctr_col(window_days: int) -> str:
    return f"ctr_{window_days}d"


def rate_col(engagement: str, window_days: int) -> str:
    return f"{engagement}_rate_{window_days}d"


def bucket_labels(bounds: list) -> list[str]:
    """Edges [18, 25] -> ["lt18", "18_24", "25p"] for ints; [15.0, 60.0] -> ["lt15", "15_60", "60p"]."""
    def fmt(x: float) -> str:
        return f"{x:g}".replace(".", "p")

    if not bounds:
        return ["all"]
    ints = all(float(b).is_integer() and not isinstance(b, float) for b in bounds)
    labels = [f"lt{fmt(bounds[0])}"]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        labels.append(f"{fmt(lo)}_{fmt(hi - 1) if ints else fmt(hi)}")
    labels.append(f"{fmt(bounds[-1])}p")
    return labels


def _stat_fields(windows: list[int]) -> list[T.StructField]:
    out = []
    for w in windows:
        out += [_f(count_col(e, w), L, False) for e in STAT_EVENTS]
        out += [_f(ctr_col(w), D, False)] + [_f(rate_col(e, w), D, False) for e in ENGAGEMENTS]
    return out


def user_features_schema(fc) -> T.StructType:  # noqa: ANN001 - FeaturesConfig (no import cycle)
    b = fc.breakdown_window_days
    return T.StructType([
        _f(Col.USER, S, False), _f(Col.GENDER, S), _f(Col.AGE, I), _f(FCol.AGE_BUCKET, S), _f(Col.CITY, S),
        _f(FCol.GEOHASH_PREFIX, S), _f(Col.DEVICE_OS, S), _f(Col.OCCUPATION, S), _f(FCol.ACCOUNT_AGE_DAYS, D),
        _f(FCol.IS_NEW, B), _f(f"active_days_{b}d", I, False), _f(FCol.ACTIVITY_LEVEL, S, False),
        *_stat_fields(fc.windows_days),
        *[_f(f"ctr_media_{m}_{b}d", D, False) for m in fc.media_types],
        _f(FCol.TOP_CATEGORIES, T.ArrayType(S, False), False), _f(FCol.TOP_CATEGORY_CTRS, T.ArrayType(D, False), False),
    ])


def item_features_schema(fc) -> T.StructType:  # noqa: ANN001
    b = fc.breakdown_window_days
    return T.StructType([
        _f(Col.ITEM, S, False), _f(Col.AUTHOR, S), _f(Col.CATEGORY, S), _f(Col.TAGS, T.ArrayType(S)),
        _f(Col.MEDIA_TYPE, S), _f(Col.DURATION, D), _f(FCol.DURATION_BUCKET, S), _f(FCol.GEOHASH_PREFIX, S),
        _f(Col.CITY, S), _f(FCol.ITEM_AGE_DAYS, D),
        *_stat_fields(fc.windows_days),
        *[_f(f"ctr_gender_{g}_{b}d", D, False) for g in fc.genders],
        *[_f(f"ctr_age_{a}_{b}d", D, False) for a in bucket_labels(fc.age_bounds_years)],
        _f(FCol.AUTHOR_ITEMS, L), _f(FCol.AUTHOR_FOLLOWERS, L), _f(f"author_impressions_{b}d", L),
        _f(f"author_clicks_{b}d", L), _f(f"author_ctr_{b}d", D),
    ])


def _prefixed(schema: T.StructType, key: str, prefix: str) -> list[T.StructField]:
    return [_f(prefix + f.name, f.dataType) for f in schema.fields if f.name != key]


def samples_recall_schema(fc) -> T.StructType:  # noqa: ANN001
    """One row per (user, item) pair: the positive of a group or one of its negatives."""
    return T.StructType([
        _f(FCol.GROUP, S, False), _f(Col.USER, S, False), _f(Col.ITEM, S, False), _f(FCol.LABEL, I, False),
        _f(FCol.SOURCE, S, False), _f(Col.REQUEST, S), _f(Col.TS, TS, False), _f(FCol.LABEL_WEIGHT, D, False),
        _f(FCol.SAMPLING_PROB, D, False), _f(FCol.POS_FREQ, D, False), _f(FCol.KEEP_PROB, D, False),
        _f(FCol.LASTN_ITEMS, T.ArrayType(S, False), False), _f(FCol.FEATURES_DT, S, False),
        *_prefixed(user_features_schema(fc), Col.USER, USER_PREFIX),
        *_prefixed(item_features_schema(fc), Col.ITEM, ITEM_PREFIX),
    ])


def samples_ranking_schema(fc) -> T.StructType:  # noqa: ANN001
    """One row per kept impression of the sample window."""
    return T.StructType([
        _f(Col.USER, S, False), _f(Col.ITEM, S, False), _f(Col.REQUEST, S), _f(Col.POSITION, I),
        _f(Col.TS, TS, False),
        *[_f(c, I, False) for c in (FCol.CLICK, FCol.LIKE, FCol.COLLECT, FCol.SHARE, FCol.COMMENT)],
        _f(Col.WATCH, D, False), _f(FCol.NEG_KEEP_RATE, D, False), _f(FCol.SAMPLE_WEIGHT, D, False),
        _f(FCol.LASTN_ITEMS, T.ArrayType(S, False), False), _f(FCol.FEATURES_DT, S, False),
        *_prefixed(user_features_schema(fc), Col.USER, USER_PREFIX),
        *_prefixed(item_features_schema(fc), Col.ITEM, ITEM_PREFIX),
    ])
