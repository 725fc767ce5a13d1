"""Column and table names, declared once, importable without pyspark.

:mod:`recsys_batch.schemas` builds the Spark schemas from these names (and re-exports them); the
JVM-free stages (train, index, publish) import them from here, so they never load pyspark.
"""

from __future__ import annotations


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
    # two-tower exports
    EMBEDDING = "embedding"
    MODEL_VERSION = "model_version"
    # merged recall and the exposure filter
    CHANNELS = "channels"
    BLOOM = "bloom"
    M_BITS = "m_bits"
    K_HASHES = "k_hashes"
    FP_RATE = "fp_rate"
    PROBES = "probes"
    PROBE_HITS = "probe_false_positives"


class FCol:
    """Column names of ``user_features`` / ``item_features`` / ``samples_*`` (besides :class:`Col`)."""

    AGE_BUCKET = "age_bucket"
    GEOHASH_PREFIX = "geohash_prefix"
    ACCOUNT_AGE_DAYS = "account_age_days"
    IS_NEW = "is_new"
    ACTIVITY_LEVEL = "activity_level"
    TOP_CATEGORIES = "top_categories"
    TOP_CATEGORY_CTRS = "top_category_ctrs"
    DURATION_BUCKET = "duration_bucket"
    ITEM_AGE_DAYS = "item_age_days"
    AUTHOR_ITEMS = "author_items"
    AUTHOR_FOLLOWERS = "author_followers"
    # samples
    GROUP = "group_id"
    LABEL = "label"
    SOURCE = "source"
    LABEL_WEIGHT = "label_weight"
    SAMPLING_PROB = "item_sampling_prob"
    POS_FREQ = "item_pos_freq"
    KEEP_PROB = "keep_prob"
    LASTN_ITEMS = "lastn_items"
    FEATURES_DT = "features_dt"  # dt of the feature snapshot a sample row was joined with
    CLICK = "click"
    LIKE = "like"
    COLLECT = "collect"
    SHARE = "share"
    COMMENT = "comment"
    NEG_KEEP_RATE = "neg_keep_rate"
    SAMPLE_WEIGHT = "sample_weight"


#: prefixes of the feature columns joined into samples
USER_PREFIX, ITEM_PREFIX = "u_", "i_"

# Delta tables the JVM-free stages read or write (the Spark stages name theirs in recsys_batch.pipeline)
SAMPLES_RECALL = "samples_recall"
USER_FEATURES, ITEM_FEATURES = "user_features", "item_features"
USER_ITEM_MATRIX = "user_item_matrix"
USER_LASTN = "user_lastn"
ITEM_EMBEDDINGS, USER_EMBEDDINGS = "item_embeddings", "user_embeddings"
RECALL_TWO_TOWER = "recall_two_tower"
