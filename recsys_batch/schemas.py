"""Column names and table schemas, declared once and used everywhere.

The *contract* schemas (``EVENTS`` ... ``RANK_LOGS``) describe the validated Delta tables the ingest
job writes; ``REQUIRED`` lists which source columns must be present (the others are nullable and
filled with null when a source lacks them). Derived tables (matrix, last-N, activity) follow.
"""

from __future__ import annotations

from pyspark.sql import types as T


class Col:
    USER = "user_id"
    ITEM = "item_id"
    AUTHOR = "author_id"
    EVENT = "event_type"
    TS = "ts"
    WATCH = "watch_time_s"
    REQUEST = "request_id"
    POSITION = "position"
    DT = "dt"
    SCORE = "score"
    WEIGHT = "weight"
    N_EVENTS = "n_events"
    LAST_TS = "last_ts"
    ITEMS = "items"
    N_USERS = "n_users"
    N_ITEMS = "n_items"
    RANK = "rank"
    NEIGHBOR = "neighbor"
    STAGE = "stage"
    PASSED = "passed"
    GENDER = "gender"
    AGE = "age"
    CITY = "city"
    GEOHASH = "geohash"
    REGISTER_TS = "register_ts"
    DEVICE_OS = "device_os"
    OCCUPATION = "occupation"
    CATEGORY = "category"
    TAGS = "tags"
    PUBLISH_TS = "publish_ts"
    MEDIA_TYPE = "media_type"
    DURATION = "duration_s"
    TITLE = "title"
    # quarantine
    REASON = "reason"
    SOURCE_FILE = "source_file"
    # dense integer ids
    USER_IDX = "user_idx"
    ITEM_IDX = "item_idx"


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
