"""Typed, frozen configuration: ``conf/base.yaml`` + an overlay + ``--set a.b=c`` overrides.

Resolution order (later wins):

1. the defaults declared on the models below (so a missing base.yaml still gives a working config);
2. ``base.yaml`` from the directory of the overlay (or the project's ``conf/``);
3. the overlay (``--conf local``, ``--conf cluster`` or ``--conf path/to/file.yaml``);
4. ``--set key.path=value`` overrides, values parsed as YAML scalars (``null``, ``0.1``, ``[a, b]``).

Unknown keys and bad values raise :class:`ConfigError` naming the key path, e.g.
``matrix.half_life_days: Input should be greater than 0 (got -1)``.

This module and :mod:`recsys_batch.spark` are the only ones that read environment variables.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt, ValidationError, field_validator, model_validator,
)

from recsys_batch.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONF_DIR = PROJECT_ROOT / "conf"
CONF_DIR_ENV = "RECSYS_BATCH_CONF_DIR"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class WarehouseConfig(_Model):
    """Where tables live. Any Hadoop URI works (``s3a://bucket/recsys``, ``hdfs:///recsys``)."""

    root: str = "warehouse"
    #: where ``generate`` / ``import-movielens`` write raw inputs; sources may refer to it as {raw_root}
    raw_root: str = "warehouse/raw"

    def table_path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/delta/{name}"


class SparkConfig(_Model):
    #: ``null`` leaves the master to spark-submit / the cluster manager.
    master: str | None = "local[2]"
    app_name: str = "recsys-batch"
    shuffle_partitions: int = Field(8, ge=1)
    ui_enabled: bool = False
    driver_memory: str | None = "4g"
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"
    #: folder of pre-fetched Delta jars (``make jars``); env RECSYS_BATCH_JARS_DIR overrides;
    #: default ``<project>/.jars``.
    jars_dir: str | None = None
    #: Maven coordinates resolved by Spark at start-up (clusters with network). Used when no jar folder
    #: is found, or always when ``prefer_packages`` is true.
    jars_packages: str | None = None
    prefer_packages: bool = False
    #: any other Spark conf, passed through verbatim
    conf: dict[str, str] = Field(default_factory=dict)


SourceFormat = Literal["parquet", "csv", "json", "delta"]


class SourceConfig(_Model):
    """One input. ``path`` may hold ``{date}`` (YYYY-MM-DD of the run) and ``{raw_root}``; any other
    ``{a,b}`` is a Hadoop glob (alternatives) and is left as it is."""

    path: str
    format: SourceFormat = "parquet"
    options: dict[str, str] = Field(default_factory=dict)
    required: bool = False

    @field_validator("path")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        # a lone {word} is no useful glob (one alternative): it is a mistyped placeholder
        bad = [m for m in re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", v) if m not in _PLACEHOLDERS]
        if bad:
            raise ValueError(f"unknown placeholder {{{bad[0]}}} in {v!r}: use {{date}} or {{raw_root}}, "
                             f"or a Hadoop glob with alternatives such as {{a,b}}")
        return v

    def resolve(self, run_date: date, raw_root: str) -> str:
        values = {"date": run_date.isoformat(), "raw_root": raw_root.rstrip("/")}
        return re.sub(r"\{(date|raw_root)\}", lambda m: values[m.group(1)], self.path)


_PLACEHOLDERS = ("date", "raw_root")


class SourcesConfig(_Model):
    events: SourceConfig = SourceConfig(path="{raw_root}/events/dt={date}", required=True)
    users: SourceConfig | None = SourceConfig(path="{raw_root}/users/dt={date}")
    items: SourceConfig | None = SourceConfig(path="{raw_root}/items/dt={date}")
    follows: SourceConfig | None = SourceConfig(path="{raw_root}/follows/dt={date}")
    rank_logs: SourceConfig | None = SourceConfig(path="{raw_root}/rank_logs/dt={date}")

    @model_validator(mode="after")
    def _events_required(self) -> SourcesConfig:
        if not self.events.required:
            raise ValueError("sources.events.required must stay true: events are the required input")
        return self


class EventsConfig(_Model):
    """The event types of the contract and their weight in the user-item matrix.

    A type with weight 0 (impressions) is kept in ``events`` but does not enter the matrix.
    """

    weights: dict[str, float] = Field(
        default_factory=lambda: {
            "impression": 0.0, "click": 1.0, "like": 2.0, "collect": 3.0, "share": 4.0, "comment": 3.0,
        }
    )

    @field_validator("weights")
    @classmethod
    def _check(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("at least one event type is needed")
        bad = {k: w for k, w in v.items() if w < 0}
        if bad:
            raise ValueError(f"weights must be >= 0, got {bad}")
        if not any(w > 0 for w in v.values()):
            raise ValueError("at least one event type needs a positive weight")
        return {k.strip().lower(): float(w) for k, w in v.items()}

    @property
    def types(self) -> list[str]:
        return sorted(self.weights)

    @property
    def positive_types(self) -> list[str]:
        return sorted(k for k, w in self.weights.items() if w > 0)


class IngestConfig(_Model):
    #: a batch with more rejected rows than this share fails before anything is published
    max_reject_ratio: float = Field(0.05, ge=0.0, le=1.0)
    #: a timestamp later than the end of the run date plus this is ``future_ts``
    future_tolerance_minutes: int = Field(10, ge=0)
    #: an event older than the start of the run date minus this many days is ``stale_ts``;
    #: ``null`` accepts any age (one-off historical imports)
    max_lateness_days: int | None = Field(3, ge=0)
    #: pattern for string timestamps (Spark datetime pattern); ``null`` = ISO-8601
    ts_format: str | None = None
    #: unit of numeric (epoch) timestamps
    epoch_unit: Literal["s", "ms"] = "s"
    #: separator of ``tags`` when a source stores them as one string (CSV)
    tags_separator: str = "|"
    #: the daily input check fails when the events batch has fewer rows (a truncated delivery)
    min_event_rows: int = Field(1, ge=0)


class MatrixConfig(_Model):
    """score(u, i) = sum over events of weight(type) * 0.5 ** (age_days / half_life_days)."""

    lookback_days: int = Field(30, ge=1)
    half_life_days: float = Field(7.0, gt=0)
    #: heavy-user cap: keep this many items per user (``cap_order`` decides which)
    max_items_per_user: int = Field(500, ge=1)
    cap_order: Literal["recent", "score"] = "recent"
    #: length of ``user_lastn`` (most recent positive items per user)
    lastn: int = Field(50, ge=1)


class PairCapConfig(_Model):
    """Caps that bound pair generation (shared by the similarity jobs).

    ItemCF costs sum_u min(|I(u)|, max_items_per_user)^2 pairs; UserCF and Swing cost
    sum_i min(|N(i)|, max_users_per_item)^2. Capped rows are chosen by ``cap_strategy``:
    ``recent`` keeps the most recent interactions, ``sample`` a deterministic hash sample (seeded).
    """

    max_items_per_user: int = Field(200, ge=1)
    max_users_per_item: int = Field(1000, ge=1)
    cap_strategy: Literal["recent", "sample"] = "recent"
    #: drop pairs co-occurring in fewer than this many users (items) before scoring
    min_support: int = Field(1, ge=1)
    #: neighbours kept per key
    top_k: int = Field(100, ge=1)
    seed: int = 17
    #: row blocks (Spark tasks) of the sparse product; ``null`` = 4 x the default parallelism
    blocks: int | None = Field(None, ge=1)


class ItemCFConfig(PairCapConfig):
    """``penalized``: sum_{u in N(i)&N(j)} 1/log(1+|I(u)|) / (|N(i)|^(1-alpha) |N(j)|^alpha);
    ``cosine``: sum_u r(u,i) r(u,j) / (||r(.,i)|| ||r(.,j)||) on the weighted matrix."""

    kind: Literal["penalized", "cosine"] = "penalized"
    #: popularity penalty on the neighbour j (0.5 = symmetric; larger punishes hot neighbours more)
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    #: divide each user's contribution by log(1+|I(u)|) (heavy users count less)
    activity_penalty: bool = True


class SwingConfig(PairCapConfig):
    """sim(i,j) = sum_{u<v in N(i)&N(j)} w_u w_v / (alpha + |I(u)&I(v)|), w_u = (|I(u)|+c)^-beta."""

    alpha: float = Field(1.0, gt=0.0)
    c: float = Field(0.0, ge=0.0)
    beta: float = Field(0.5, ge=0.0)
    max_users_per_item: int = Field(1000, ge=1)


class UserCFConfig(PairCapConfig):
    """sim(u,v) = sum_{i in I(u)&I(v)} 1/log(1+|N(i)|) / sqrt(|I(u)| |I(v)|)."""

    top_k: int = Field(50, ge=1)


class RecallConfig(_Model):
    """Recall lists per channel: top ``top_n`` items per user, excluding items the user has.

    Each channel decays on its own clock, not the matrix's (README "Similarity and recall"): the matrix
    half-life is tuned for "what is this user into now", which is right for ranking seeds but wrong for
    weighting other users' items or the popularity of a sparse day.
    """

    top_n: int = Field(200, ge=1)
    #: item-based channels (ItemCF, Swing) score from the user's last N matrix items
    lastn_items: int = Field(20, ge=1)
    #: user-based channel: each neighbour contributes its most recent N items
    neighbor_recent_items: int = Field(50, ge=1)
    #: user-based channel: a neighbour's item counts 0.5 ** (age_days(last_ts) / this); ``null`` = presence,
    #: r(v, i) = 1 (a neighbour's taste does not expire with the matrix's 7-day half-life)
    usercf_half_life_days: float | None = Field(None, gt=0)
    #: popular channel: weighted event counts over this window (``null`` = matrix.lookback_days) ...
    popular_lookback_days: int | None = Field(None, ge=1)
    #: ... decayed with this half-life (``null`` = plain counts, no decay)
    popular_half_life_days: float | None = Field(None, gt=0)
    #: popular channel: the global list is top_n + this many items; a user who has seen more than this
    #: many of them gets fewer than top_n. Costs only the (broadcast) list length, not rows per user.
    popular_margin_items: int = Field(500, ge=0)
    #: users to build recall lists for: ``null`` = every user of the matrix (its lookback window);
    #: N = only those with a positive event within N days of the run date
    active_days: int | None = Field(None, ge=1)


#: merge channels in this order (snake) with these quotas: every ``recall_<channel>`` of this round
DEFAULT_MERGE_QUOTAS = {
    "itemcf": 150, "usercf": 150, "two_tower": 150, "ease": 150, "sequential": 150, "swing": 50, "item2vec": 50,
    "als": 50, "author": 30, "similar_author": 20, "fresh": 30, "hot": 30, "geo": 20, "new_users": 50, "popular": 30,
}


class MergeConfig(_Model):
    """``recall_merged`` and the exposure filter ``exposure_bloom`` (:mod:`recsys_batch.recall.merge`,
    :mod:`recsys_batch.recall.exposure`; README "Merged list and exposure filter")."""

    #: ``rrf``: score = sum_c weight_c / (rrf_k + rank_c) (Cormack et al. 2009); ``snake``: round-robin over
    #: the channels in ``quotas`` order, each turn the channel's best item not taken yet
    method: Literal["rrf", "snake"] = "rrf"
    #: channel -> max items taken from ``recall_<channel>`` per user (its best unexposed ones); the key order
    #: is the snake order; a channel whose table has no dt=D partition is skipped with a log line; 0 = not
    #: merged (an overlay's map is merged into the base one key by key, so 0 is how an overlay drops one)
    quotas: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_MERGE_QUOTAS))
    #: RRF constant k (60 in Cormack et al.: damps the weight of the very top ranks)
    rrf_k: float = Field(60.0, gt=0)
    #: RRF weight per channel (a channel not listed weighs 1): the fallback of ``learn_weights`` (day 1, a
    #: channel without D-1 lists) or the weights when it is off. Default none: equal weights, the unweighted
    #: RRF of Cormack et al.; hand-set weights are one data set's fit (README "Merged list")
    weights: dict[str, float] = Field(default_factory=dict)
    #: RRF weights learned each day: the channel lists of D-1 scored on the positive events of D (per channel,
    #: recall@learn_k over the test users it has a list for), w_c = recall_c / max recall; a channel without
    #: D-1 lists or validated on fewer than learn_min_users users keeps ``weights`` (the whole map on day 1)
    learn_weights: bool = True
    learn_k: int = Field(100, ge=1)
    learn_min_users: int = Field(100, ge=1)
    #: how learned weights are chosen: ``search`` = from the ratio weights, coordinate ascent of the fused
    #: list's mean recall@``search_ks`` on a sample of D-1's validation users (at most ``search_max_users``),
    #: each validated channel's weight tried at every ``search_grid`` value, ``search_rounds`` passes
    #: (:mod:`recsys_batch.recall.fusion_search`) | ``ratio`` = w_c = recall_c / max recall alone
    learn_method: Literal["search", "ratio"] = "search"
    search_ks: list[PositiveInt] = Field(default_factory=lambda: [50, 200], min_length=1)
    search_grid: list[NonNegativeFloat] = Field(default_factory=lambda: [0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0],
                                                min_length=1)
    search_rounds: int = Field(2, ge=1)
    search_max_users: int = Field(2000, ge=1)
    #: items per user in recall_merged (after the exposure filter)
    top_n: int = Field(500, ge=1)
    #: drop the items the user's exposure Bloom filter reports as shown
    filter_exposed: bool = True
    #: the event type that means "shown" (one of events.weights)
    exposure_event: str = "impression"
    #: exposure window: impressions with ts in the N days ending at D (from every events batch that can hold one)
    exposure_days: int = Field(7, ge=1)
    #: a user's newest N exposed items enter the filter (heavy-user cap; older ones may come back)
    max_exposed_items_per_user: int = Field(2000, ge=1)
    #: target false-positive rate p of each user's filter (m = ceil(-n ln p / ln(2)^2), k = round(m/n ln 2))
    bloom_fp_rate: float = Field(0.01, gt=0.0, lt=0.5)
    #: per user, this many ids known not to be exposed are probed to measure the false-positive rate
    fpr_probes_per_user: int = Field(20, ge=0)

    @field_validator("quotas")
    @classmethod
    def _quotas(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {c: q for c, q in v.items() if q < 0}
        if bad:
            raise ValueError(f"quotas must be >= 0, got {bad}")
        if not any(q > 0 for q in v.values()):
            raise ValueError("at least one channel needs a quota > 0")
        return v

    @property
    def channels(self) -> list[str]:
        """The merged channels (quota > 0), in snake order."""
        return [c for c, q in self.quotas.items() if q > 0]

    @model_validator(mode="after")
    def _weights(self) -> MergeConfig:
        known = [*self.quotas, *(c for c in DEFAULT_MERGE_QUOTAS if c not in self.quotas)]
        unknown = sorted(set(self.weights) - set(known))
        if unknown:  # a typo; a known channel left out of quotas keeps its (unused) weight
            raise ValueError(f"merge.weights names unknown channel(s): {', '.join(unknown)}; "
                             f"channels: {', '.join(known)}")
        neg = {c: w for c, w in self.weights.items() if w < 0}
        if neg:
            raise ValueError(f"merge.weights must be >= 0, got {neg}")
        return self

    def weight(self, channel: str) -> float:
        return float(self.weights.get(channel, 1.0))

class RulesConfig(_Model):
    """Rule / content-based recall channels (stage ``recall_rules``, :mod:`recsys_batch.recall.rules`).

    Every list is top ``recall.top_n`` per user with seen items excluded; hot, fresh, author,
    similar_author and geo are built for the recall stage's users (``recall.active_days``), new_users for
    the users with fewer than ``new_user_max_items`` matrix items (the ``users`` table included).
    """

    #: user profile (hot / fresh): shares of category / tag / author over the user's N most recent matrix items
    profile_recent_items: int = Field(50, ge=1)
    #: hot / fresh: candidates from the user's top this-many categories (tags, authors)
    profile_top_keys: int = Field(3, ge=1)
    # ---- hot: trend(i) = (n_short / short_days + a) / (n_long / long_days + a), n = weighted positive events
    hot_short_days: int = Field(1, ge=1)
    hot_long_days: int = Field(7, ge=2)
    #: a, in weighted events per day added to both rates: shrinks a low-volume item's ratio towards 1
    hot_smoothing_per_day: float = Field(5.0, gt=0)
    #: an item needs this many weighted events in the short window to be trending at all
    hot_min_short_events: float = Field(3.0, ge=0)
    #: global trending list length, and per-category list length
    hot_global_items: int = Field(200, ge=1)
    hot_category_items: int = Field(100, ge=1)
    #: score(u, i) = trend(i) * (1 + boost * share_u(category(i)))
    hot_category_boost: float = Field(1.0, ge=0)
    # ---- fresh: items published in the last fresh_days, lift = smoothed ctr / prior ctr + content similarity
    fresh_days: int = Field(7, ge=1)
    #: m, pseudo-impressions of the Bayesian prior: rate = (clicks + m * p0) / (impressions + m)
    fresh_prior_impressions: float = Field(20.0, gt=0)
    #: score(u, i) = lift(i) + content_weight * sim(u, i), sim in [0, 1]
    fresh_content_weight: float = Field(1.0, ge=0)
    #: sim(u, i) weights of category / tag / author overlap
    fresh_category_weight: float = Field(1.0, ge=0)
    fresh_tag_weight: float = Field(0.5, ge=0)
    fresh_author_weight: float = Field(1.0, ge=0)
    #: candidates: the global top-N fresh items by lift plus, per profile key, its top-N fresh items
    fresh_global_items: int = Field(200, ge=1)
    fresh_key_items: int = Field(50, ge=1)
    # ---- author / similar_author
    #: an author the user has at least this many positive events on counts as engaged with (besides follows)
    author_min_events: int = Field(2, ge=1)
    #: per user at most this many authors (follows first, then by events), per author its newest N items
    author_max_authors: int = Field(50, ge=1)
    author_recent_items: int = Field(20, ge=1)
    #: similar_author: cosine over the user x author presence matrix, top-K per author; users with more
    #: authors than the cap contribute their most recent ones (bounds the sum_u |A(u)|^2 pairs)
    similar_author_top_k: int = Field(20, ge=1)
    similar_author_max_authors_per_user: int = Field(100, ge=1)
    similar_author_min_support: int = Field(2, ge=1)
    # ---- geo
    #: geohash prefix length of a cell (4 ~ 39 x 20 km, 5 ~ 5 x 5 km)
    geo_precision: int = Field(4, ge=1, le=12)
    #: score(cell, i) = local(cell, i) + global_weight * pop(i); top-N items per cell
    geo_global_weight: float = Field(0.1, ge=0)
    geo_cell_items: int = Field(500, ge=1)
    # ---- new_users
    #: users with fewer distinct matrix items than this (users without any included)
    new_user_max_items: int = Field(5, ge=1)
    #: buckets, finest first; a user gets the first bucket (all its keys non-null) with enough users, else
    #: global popularity. Keys: age_bucket (features.age_bounds_years), gender, city
    new_user_buckets: list[list[Literal["age_bucket", "gender", "city"]]] = Field(
        default_factory=lambda: [["age_bucket", "gender", "city"], ["age_bucket", "gender"], ["age_bucket"]])
    #: a bucket with fewer distinct users with a positive event in the popular window is thin
    new_user_min_bucket_users: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _windows(self) -> RulesConfig:
        if self.hot_short_days >= self.hot_long_days:
            raise ValueError(f"hot_short_days ({self.hot_short_days}) must be < hot_long_days ({self.hot_long_days})")
        if self.fresh_category_weight + self.fresh_tag_weight + self.fresh_author_weight <= 0:
            raise ValueError("fresh_category_weight + fresh_tag_weight + fresh_author_weight must be > 0")
        if any(not b or len(set(b)) != len(b) for b in self.new_user_buckets):
            raise ValueError(f"new_user_buckets: each bucket needs distinct keys, got {self.new_user_buckets}")
        return self
class Item2VecConfig(_Model):
    """item2vec (Barkan & Koenigstein 2016): skip-gram item vectors from the users' sessions, kNN by cosine."""

    #: a gap longer than this between two positive events of a user starts a new session
    session_gap_minutes: float = Field(30.0, gt=0)
    vector_size: int = Field(64, ge=2)
    window_size: int = Field(5, ge=1)
    #: items seen fewer times in the sessions get no vector (Spark ML Word2Vec minCount)
    min_count: int = Field(5, ge=1)
    #: passes over the sessions (Word2Vec maxIter)
    max_iter: int = Field(5, ge=1)
    step_size: float = Field(0.025, gt=0)
    #: Word2Vec partitions: 1 is deterministic for a seed (one task); more are faster, not reproducible
    num_partitions: int = Field(1, ge=1)
    #: neighbours kept per item in item2vec_topk (cosine > 0 only)
    top_k: int = Field(100, ge=1)


class SequentialConfig(_Model):
    """Sequential rules (SR; Kamehkhosh, Jannach & Ludewig 2017, Ludewig & Jannach 2018): i -> j when j follows
    i within ``steps`` positions of a session, weighted 1 / gap; scored from the user's most recent items."""

    #: a gap longer than this between two positive events of a user starts a new session (as item2vec)
    session_gap_minutes: float = Field(30.0, gt=0)
    #: rules i -> j for j at most this many positions after i (the papers' default 10), weight 1 / gap
    steps: int = Field(10, ge=1)
    #: rules kept per source item in sequential_topk (highest share of i's rule weight)
    top_k: int = Field(100, ge=1)
    #: seeds: the user's N most recent matrix items ...
    lastn_items: int = Field(20, ge=1)
    #: ... weighted 0.5 ** (p / this), p = 0, 1, ... the seed's recency rank (0 = newest)
    seed_half_life_items: float = Field(5.0, gt=0)


class EaseConfig(_Model):
    """EASE (Steck 2019): B = I - P diag(1/diag(P)), P = (X^T X + lambda I)^-1 over the binary matrix."""

    #: L2 strength lambda, in co-occurrence-count units (a prior worth lambda users per item)
    l2: float = Field(500.0, gt=0)
    #: the model covers the most popular items only: the driver holds n x n matrices (n = 20k: 3.2 GB per
    #: float64 copy, ~3 copies at the peak of the inversion; float32 halves it)
    max_items: int = Field(20_000, ge=2)
    #: co-occurrences of a user count for their most recent N items only (pair generation ~ N^2 per user)
    max_items_per_user: int = Field(500, ge=1)
    dtype: Literal["float32", "float64"] = "float64"
    #: scoring weight of a user's item: 0.5 ** (p / this), p = 0, 1, ... its recency rank among the user's matrix
    #: items (last_ts desc); ``null`` = 1 for every item (the paper's binary x_u). The model B stays binary
    recency_half_life_items: float | None = Field(25.0, gt=0)
    #: ``exact``: score(u, .) = x_u B for every item of the model, in Spark tasks holding B;
    #: ``topk``: keep the top_k largest B_ij per row i and score like ItemCF over all the user's items
    scoring: Literal["exact", "topk"] = "exact"
    top_k: int = Field(200, ge=1)
    #: users scored per batch inside a task (memory: batch x n floats)
    batch_users: int = Field(1024, ge=1)


class ALSConfig(_Model):
    """Spark ML ALS with implicit preferences (Hu, Koren & Volinsky 2008) on presence (r = 1)."""

    rank: int = Field(64, ge=1)
    max_iter: int = Field(10, ge=1)
    reg_param: float = Field(0.05, ge=0)
    #: confidence c = 1 + alpha * r
    alpha: float = Field(10.0, ge=0)
    num_blocks: int = Field(4, ge=1)
    batch_users: int = Field(4096, ge=1)


class LatentConfig(_Model):
    """Latent-factor / embedding / sequence recall channels (stage ``latent``): item2vec, EASE, ALS, sequential."""

    #: channels built, in order; a channel not listed writes nothing
    channels: list[Literal["item2vec", "ease", "als", "sequential"]] = Field(
        default_factory=lambda: ["item2vec", "ease", "sequential"])
    seed: int = 13
    item2vec: Item2VecConfig = Item2VecConfig()
    sequential: SequentialConfig = SequentialConfig()
    ease: EaseConfig = EaseConfig()
    als: ALSConfig = ALSConfig()


class EvaluateConfig(_Model):
    """``published``: the ``recall_<channel>`` tables of D against what users did after D (truth_days of
    events, or ``truth_path``); ``rebuild``: the channels rebuilt on a split of D's window; ``both``."""

    mode: Literal["published", "rebuild", "both"] = "both"
    split: Literal["user_chrono", "time"] = "user_chrono"
    #: user_chrono: share of each user's newest positive interactions held out
    holdout_ratio: float = Field(0.2, gt=0.0, lt=1.0)
    #: time: events in the last N days are held out
    holdout_days: int = Field(1, ge=1)
    #: cut-offs of every per-K metric (all computed from the same passes over the lists)
    ks: list[int] = Field(default_factory=lambda: [50, 100, 200, 500])
    #: channels left out of the unique-hit overlap (they mix the others' lists; their unique_hits is null)
    overlap_exclude: list[str] = Field(default_factory=lambda: ["merged"])
    #: rebuild mode: the channels rebuilt (published mode scores every recall_<channel> table of D)
    channels: list[str] = Field(default_factory=lambda: ["itemcf", "swing", "usercf", "popular"])
    #: published mode: truth = positive events with ts in the N days after D (events dt D+1 .. D+N)
    truth_days: int = Field(1, ge=1)
    #: published mode: an explicit truth table instead (Parquet folder with user_id, item_id[, ts]; may hold
    #: {date} = D): every row is truth, whatever its ts
    truth_path: str | None = None


class GenerateConfig(_Model):
    """Synthetic log: sizes and rates. Deterministic for a given seed and end date."""

    seed: int = 42
    days: int = Field(7, ge=1)
    n_users: int = Field(3000, ge=10)
    n_items: int = Field(2000, ge=10)
    n_authors: int = Field(200, ge=1)
    n_categories: int = Field(20, ge=1)
    n_clusters: int = Field(8, ge=1)
    #: mean impressions per active user and day (heavy-tailed across users)
    impressions_per_user_day: float = Field(20.0, gt=0)
    #: share of users active on a given day
    daily_active_ratio: float = Field(0.5, gt=0, le=1)
    #: probability that an impression comes from the user's own interest cluster
    in_cluster_ratio: float = Field(0.75, ge=0, le=1)
    #: Zipf exponent of item popularity within a cluster
    zipf_exponent: float = Field(1.1, gt=0)
    #: share of rows planted to break the contract (so quarantine has something to show)
    bad_row_ratio: float = Field(0.002, ge=0, le=0.5)


class BetaPrior(_Model):
    """Beta(alpha, beta) prior of a rate: smoothed = (successes + alpha) / (trials + alpha + beta)."""

    alpha: float = Field(gt=0)
    beta: float = Field(gt=0)


def _default_priors() -> dict[str, BetaPrior]:
    # ctr = clicks / impressions; the others are per click (like / click, ...)
    return {
        "ctr": BetaPrior(alpha=1.0, beta=19.0), "like": BetaPrior(alpha=1.0, beta=4.0),
        "collect": BetaPrior(alpha=1.0, beta=9.0), "share": BetaPrior(alpha=1.0, beta=19.0),
        "comment": BetaPrior(alpha=1.0, beta=19.0),
    }


class FeaturesConfig(_Model):
    """User/item profiles, windowed statistics, fitted transforms, feature spec and coverage.

    Features of run date D use only data with ts < D + 1 day 00:00 UTC (batches dt <= D).
    """

    #: statistic windows, in days ending at the end of D (1 = the day D itself)
    windows_days: list[int] = Field(default_factory=lambda: [1, 7, 30])
    #: window of the breakdowns (ctr per media type / top categories / audience bucket / author)
    breakdown_window_days: int = Field(30, ge=1)
    #: ``fixed``: the priors below; ``moments``: fitted per table and rate by the method of moments on the
    #: entities with at least ``prior_min_trials`` trials in the longest window (fixed prior as fallback)
    prior_mode: Literal["fixed", "moments"] = "fixed"
    priors: dict[str, BetaPrior] = Field(default_factory=_default_priors)
    prior_min_trials: int = Field(20, ge=1)
    #: media types that get a per-media ctr column on users (``ctr_media_<type>_<w>d``)
    media_types: list[str] = Field(default_factory=lambda: ["video", "note", "product"])
    #: genders (lower-case) that get an audience ctr column on items (``ctr_gender_<g>_<w>d``)
    genders: list[str] = Field(default_factory=lambda: ["f", "m"])
    #: age bucket edges in years: [18, 25] -> lt18, 18_24, 25p
    age_bounds_years: list[int] = Field(default_factory=lambda: [18, 25, 35, 45, 55])
    #: item duration bucket edges in seconds: [15, 60] -> lt15, 15_60, 60p
    duration_bounds_s: list[float] = Field(default_factory=lambda: [15.0, 60.0, 180.0, 600.0])
    #: user top categories by clicks in the breakdown window
    top_categories: int = Field(3, ge=1)
    geohash_prefix_len: int = Field(4, ge=1)
    #: a user registered less than this many days before the end of D is ``is_new``
    new_user_days: int = Field(7, ge=1)
    #: activity level from active days in the breakdown window: < [0] inactive, < [1] low, < [2] mid, else high
    activity_level_days: list[int] = Field(default_factory=lambda: [1, 4, 15])
    #: vocabularies: the most frequent values (count >= vocab_min_count), at most vocab_max_size
    vocab_max_size: int = Field(10_000, ge=1)
    vocab_min_count: int = Field(1, ge=1)
    #: out-of-vocabulary values hash into this many buckets (1 = a single OOV index)
    oov_buckets: int = Field(1, ge=1)
    #: a categorical with more distinct values than vocab_max_size (a huge id space) hashes its tail into
    #: this many buckets instead
    hash_buckets: int = Field(100_000, ge=1)
    #: quantile bucket boundaries per numeric feature (num_buckets - 1 boundaries before de-duplication)
    quantile_buckets: int = Field(10, ge=2)
    quantile_relative_error: float = Field(0.001, ge=0.0, lt=1.0)
    #: coverage (share of non-missing values) below this is a warning, per feature; overrides by name
    coverage_min: float = Field(0.5, ge=0.0, le=1.0)
    coverage_min_by_feature: dict[str, float] = Field(default_factory=dict)
    #: features (sample column names, u_* / i_*) whose coverage below threshold fails the stage
    required_features: list[str] = Field(default_factory=lambda: ["i_category", "i_media_type"])

    @field_validator("windows_days")
    @classmethod
    def _windows(cls, v: list[int]) -> list[int]:
        if not v or any(w < 1 for w in v):
            raise ValueError(f"windows must be >= 1 day, got {v}")
        return sorted(set(v))

    @field_validator("age_bounds_years", "duration_bounds_s", "activity_level_days")
    @classmethod
    def _increasing(cls, v: list) -> list:
        if any(b >= a for a, b in zip(v[1:], v[:-1], strict=False)):
            raise ValueError(f"bounds must be strictly increasing, got {v}")
        return v

    @field_validator("activity_level_days")
    @classmethod
    def _three(cls, v: list[int]) -> list[int]:
        if len(v) != 3:
            raise ValueError(f"activity_level_days needs 3 thresholds (low, mid, high), got {v}")
        return v

    @model_validator(mode="after")
    def _prior_keys(self) -> FeaturesConfig:
        missing = {"ctr", "like", "collect", "share", "comment"} - set(self.priors)
        if missing:
            raise ValueError(f"features.priors lacks {sorted(missing)}")
        return self


class SamplesConfig(_Model):
    """Recall (two-tower) and ranking samples of the window [D - window + 1, D], each row joined with the
    feature snapshot of the day before its event (see docs/features_and_samples.md)."""

    seed: int = 23
    # ---- sample window and point in time
    #: days of events ending at D that make the samples; null = auto: the days since the newest earlier
    #: samples_recall partition (1 on a daily feed: every event is sampled once across the daily runs),
    #: else max_window_days (a first day or a one-batch import trains on its history)
    window_days: int | None = Field(None, ge=1)
    max_window_days: int = Field(365, ge=1)
    #: a row of event day E joins the newest feature snapshot dt <= E - 1; without any: "earliest" = the
    #: earliest snapshot dt <= D (may count E's own and later events; counted, logged, features_dt),
    #: "drop" = drop the row (strict point in time: a first day without older features fails)
    features_fallback: Literal["earliest", "drop"] = "earliest"
    #: last-N positive items strictly before each sample's ts (sequence feature)
    lastn: int = Field(20, ge=1)
    # ---- recall samples
    #: hot-item positive down-sampling (word2vec style): f = item's share of the day's positives,
    #: keep = min(1, (sqrt(f / t) + 1) * t / f); null keeps every positive
    hot_item_share_threshold: float | None = Field(1e-3, gt=0.0, le=1.0)
    #: negatives per positive (easy + hard)
    negatives_per_positive: int = Field(4, ge=1)
    #: easy negatives ~ (clicks + popularity_smoothing) ** exponent over the catalog (item_features D-1)
    popularity_exponent: float = Field(0.75, ge=0.0)
    popularity_window_days: int = Field(7, ge=1)
    popularity_smoothing: float = Field(0.0, ge=0.0)
    #: easy draws per needed negative before excluding the user's own items (a shortfall is dropped)
    easy_oversample: float = Field(2.0, ge=1.0)
    #: share of the negatives per positive taken from rank_logs (cut at prerank/rank); easy ones fill the rest
    hard_negative_ratio: float = Field(0.25, ge=0.0, le=1.0)
    # ---- ranking samples
    #: keep rate alpha of non-clicked impressions; calibrate with p = a*q / (1 - q + a*q)
    negative_keep_rate: float = Field(0.5, gt=0.0, le=1.0)
    # ---- files for the PyTorch loader
    rows_per_file: int = Field(200_000, ge=1)
    #: Parquet row-group size in bytes (parquet.block.size)
    row_group_bytes: int = Field(16 * 1024 * 1024, ge=64 * 1024)


class TrainConfig(_Model):
    """Daily full retrain of the two-tower retrieval model (``recsys_batch.training``).

    score(u, i) = cos(u, i) / temperature; loss ``softmax`` = sampled softmax over the batch's positives and
    its stored easy negatives, every column corrected by s - log Q(j), Q = the mixture of item_pos_freq and
    item_sampling_prob (hard negatives are left out under logQ: no proposal probability). See
    ``recsys_batch.training.loss`` and docs/training.md for the losses and the defaults' measurements.
    """

    seed: int = 7
    #: output dimension d of both towers (L2-normalised)
    embedding_dim: int = Field(64, ge=2)
    #: embedding width of the user id and item id tables (item ids are shared with the last-N pooling)
    id_embedding_dim: int = Field(32, ge=1)
    #: embedding width of every other categorical / bucketised feature
    feature_embedding_dim: int = Field(8, ge=1)
    #: hidden layers of each tower's MLP
    hidden_dims: list[int] = Field(default_factory=lambda: [128])
    #: training only: zero a row's user-id / item-id embedding with this probability (DropoutNet), so the towers
    #: learn to score from features and the last-N too -- what cold users / items have
    id_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    #: training only: dropout on each tower's MLP input and hidden layers
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    temperature: float = Field(0.05, gt=0.0)
    loss: Literal["softmax", "bce", "pairwise"] = "softmax"
    #: softmax: subtract log Q(j) from every column, Q = (P pf + E q) / (P + E) (Yi et al. 2019 with the easy
    #: negatives' own q); hard negatives are then left out (no proposal probability)
    logq_correction: bool = True
    #: softmax: the batch's stored negative rows as extra (shared) columns (easy only under logQ)
    stored_negatives: bool = True
    #: pairwise: ``hinge`` max(0, margin - s+ + s-) or ``log`` log(1 + exp(-(s+ - s- - margin)))
    pairwise_kind: Literal["hinge", "log"] = "log"
    margin: float = Field(0.1, ge=0.0)
    #: sample rows (positives + stored negatives) per batch: ~1/5 positives, so 512 rows = ~100 users, each
    #: scored against ~500 columns (the batch's positives and its easy negatives)
    batch_size: int = Field(512, ge=2)
    learning_rate: float = Field(0.003, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    #: passes over the day's samples when warm-starting from yesterday's checkpoint
    epochs: int = Field(1, ge=1)
    #: without a checkpoint to start from (the first day, train.warm_start false) train at least about this many
    #: optimizer steps: whole epochs are repeated until ceil(fresh_min_steps / steps per epoch) -- a fresh model
    #: needs a number of updates, not of passes; a large day reaches it in one epoch. null = ``epochs`` only
    fresh_min_steps: int | None = Field(400, ge=1)
    #: stop after this many optimizer steps (benchmarks, smoke runs); null = the whole epoch
    max_steps: int | None = Field(None, ge=1)
    #: DataLoader worker processes (0 = read in the training process)
    num_workers: int = Field(1, ge=0)
    #: Parquet row groups mixed in the shuffle buffer of a worker (memory: this many row groups)
    shuffle_row_groups: int = Field(4, ge=1)
    #: keep at most this many items of the last-N sequence
    max_lastn: int = Field(20, ge=1)
    #: spec features not fed to the towers (by sample column name, e.g. u_city)
    exclude_features: list[str] = Field(default_factory=list)
    #: start from the newest earlier checkpoint (rows remapped by id value); false = always fresh
    warm_start: bool = True
    #: samples with ts in the last this-many hours of the label day are held out of training for the
    #: publish gate (0 = train on the whole day; the gate then has nothing to evaluate on)
    holdout_hours: float = Field(4.0, ge=0.0, lt=24.0)
    #: intra-op threads of the trainer (null = torch's default). 1 trainer thread + 1 loader worker fills 2
    #: cores; 2 trainer threads beside a worker (or on a shared box) ran 10x slower from oversubscription
    torch_threads: int | None = Field(1, ge=1)
    log_every_steps: int = Field(50, ge=1)
    progress: bool = True
    #: user embeddings are exported for users active within this many days (recall.active_days if null;
    #: both null = every user of user_activity)
    active_days: int | None = Field(None, ge=1)


#: the ranking model's tasks, in output order: five binary ones (click, then four conditional on a click) and
#: watch time (regression on log1p seconds, clicked rows)
RANKING_TASKS = ("click", "like", "collect", "share", "comment", "watch_time")


class PrerankConfig(_Model):
    """The pre-rank (coarse ranking) model (``recsys_batch.ranking.prerank``; docs/ranking.md): user tower . item
    tower (cached per user / item in serving) + a small cross tower on a few user x item features, summed logits;
    trained in train_ranking on the same rows (click, alpha calibration), optionally distilled from the ranking
    model's click logit. Off by default: nothing in the pipeline serves it yet and it adds a pass over the day's
    rows (+ a teacher forward with distillation) to the stage (docs/ranking.md gives the measured cost)."""

    enabled: bool = False
    id_embedding_dim: int = Field(16, ge=1)
    feature_embedding_dim: int = Field(4, ge=1)
    #: hidden layers of the user and the item tower; their outputs (vector_dim wide) meet in a dot product
    tower_dims: list[int] = Field(default_factory=lambda: [64])
    vector_dim: int = Field(16, ge=1)
    #: hidden layers of the cross tower on [seq_hit, seq_mean, seq_max, seq_any, value matches]
    cross_dims: list[int] = Field(default_factory=lambda: [16])
    #: (user feature, item feature) pairs compared by value: 1 when an item value is among the user's values
    cross_pairs: list[tuple[str, str]] = Field(default_factory=lambda: [("u_top_categories", "i_category")])
    #: lambda of L = (1 - lambda) BCE(z, click) + lambda BCE(z, sigmoid(ranking click logit)); 0 = no teacher
    distill_weight: float = Field(0.5, ge=0.0, le=1.0)
    learning_rate: float = Field(0.005, gt=0.0)


class RankingConfig(_Model):
    """Daily retrain of the multi-task ranking model (``recsys_batch.ranking``; docs/ranking.md).

    Input (spec categoricals / buckets / lists / dense of both sides, user and item ids, DIN attention of the
    candidate over the last-N) -> DCN-v2 cross layers -> MMoE or PLE -> one tower per task. click is trained
    on the down-sampled impressions and calibrated with p = a q / (1 - q + a q) (a = neg_keep_rate; no sample
    weights); like / collect / share / comment / watch_time on clicked rows only (conditional on a click).
    """

    seed: int = 7
    #: user-id / item-id embedding width (the item table also embeds the last-N items for DIN)
    id_embedding_dim: int = Field(16, ge=1)
    #: every other categorical / numeric bucket / list value (4: the ~90 fields of a real spec make x0 ~480 wide;
    #: 8 makes it ~830 and a CPU step ~1.7x slower, benchmarks/ranking.py)
    feature_embedding_dim: int = Field(4, ge=1)
    max_lastn: int = Field(20, ge=1)
    #: spec features left out (sample column names, e.g. u_city)
    exclude_features: list[str] = Field(default_factory=list)
    #: DCN-v2 cross layers on the input vector x0: x_{l+1} = x0 * (W x_l + b) + x_l (0 = none)
    cross_layers: int = Field(2, ge=0)
    #: W = U V^T of this rank (DCN-v2's low-rank form; cost O(d r) instead of O(d^2)); null = full rank
    cross_rank: int | None = Field(32, ge=1)
    #: hidden layers of DIN's attention MLP on [q, k, q - k, q * k]
    din_hidden_dims: list[int] = Field(default_factory=lambda: [32])
    seq_cross: bool = True       # x0 += [seq_hit, seq_mean, seq_max, seq_any]: candidate x last-N overlap
    #: x0 += one value match per (user feature, item feature) pair present in the spec (1 = shared value)
    match_pairs: list[tuple[str, str]] = Field(default_factory=lambda: [("u_top_categories", "i_category")])
    #: mmoe (Ma et al. 2018) | ple (Tang et al. 2020, progressive layered extraction)
    multitask: Literal["mmoe", "ple"] = "ple"
    #: mmoe: experts shared by every task (each an MLP with expert_dims)
    num_experts: int = Field(4, ge=1)
    expert_dims: list[int] = Field(default_factory=lambda: [32])
    #: ple: shared experts, experts per task, extraction levels
    ple_shared_experts: int = Field(2, ge=1)
    ple_task_experts: int = Field(1, ge=1)
    ple_levels: int = Field(1, ge=1)
    #: hidden layers of each task tower
    tower_dims: list[int] = Field(default_factory=lambda: [32])
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    #: loss weight per task (missing = 1)
    task_weights: dict[str, float] = Field(default_factory=dict)
    #: the conditional tasks' losses (sums over the clicked rows) divided by the batch's impressions (the joint
    #: likelihood per impression) or by its clicked rows (a mean per click: weights them by 1 / click share)
    conditional_loss: Literal["impressions", "clicks"] = "impressions"
    #: fusion exponents: score = p_click^w_click * prod_t (1 + p_t)^w_t, p_t = p_click * p(t | click) for the
    #: binary tasks, p_watch = p_click * predicted log1p(watch seconds) (published with the model)
    fusion_weights: dict[str, float] = Field(default_factory=lambda: {
        "click": 1.0, "like": 1.0, "collect": 1.0, "share": 1.0, "comment": 1.0, "watch_time": 0.5})
    batch_size: int = Field(2048, ge=2)
    #: 0.015 with fresh_min_steps 60: the parameter travel of 0.005 x 200 steps in 3.4x fewer passes over a
    #: first day (docs/ranking.md: repeated passes memorise per-id labels, too few steps miss the crosses)
    learning_rate: float = Field(0.015, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    #: passes when warm-starting (a daily full retrain is one shuffled epoch)
    epochs: int = Field(1, ge=1)
    #: without a checkpoint: repeat epochs until about this many optimizer steps (null = epochs only)
    fresh_min_steps: int | None = Field(60, ge=1)
    #: > 0: repeated fresh epochs stop early on the loss of the last this-many hours before the holdout cut (not
    #: trained on by a fresh model; the best epoch is kept). Off: on the synthetic generator the total loss
    #: turns up after ~3 epochs (conditional tasks) while click still needs ~12 (docs/ranking.md)
    fresh_validation_hours: float = Field(0.0, ge=0.0, lt=24.0)
    fresh_patience_epochs: int = Field(1, ge=1)
    #: > 0: the last this-many hours before the holdout cut are not trained on; a monotone piecewise-linear map of
    #: each task's logit (calibration_tasks) is fitted on them and applied before the alpha correction, in the
    #: stage's evaluation and the export (ranking/calibration.py; docs/ranking.md). 0: the alpha formula alone
    calibration_hours: float = Field(2.0, ge=0.0, lt=24.0)
    calibration_segments: int = Field(5, ge=2)
    calibration_tasks: list[str] = Field(default_factory=lambda: ["click"])
    max_steps: int | None = Field(None, ge=1)
    num_workers: int = Field(1, ge=0)
    shuffle_row_groups: int = Field(4, ge=1)
    warm_start: bool = True
    #: impressions in the last this-many hours of D are held out for evaluation and the gate
    holdout_hours: float = Field(4.0, ge=0.0, lt=24.0)
    #: held-out rows evaluated at most (a seeded sample of users beyond it)
    eval_max_rows: int = Field(500_000, ge=100)
    #: logistic-regression baseline on the same features, trained on the same rows (the gate compares)
    baseline: bool = True
    #: the baseline's learning rate: a zero-initialised LR needs larger steps than the embeddings of the model
    baseline_learning_rate: float = Field(0.02, gt=0.0)
    #: refuse the model when click GAUC < yesterday's model's GAUC on the same held-out rows - gate_tolerance
    #: (absolute), or <= the baseline's + gate_baseline_margin; recorded in evaluation.json: a refused model is not
    #: warm-started from and publish ships the last accepted one (publish.force: the refused one); false = record only
    gate: bool = True
    gate_tolerance: float = Field(0.01, ge=0.0, le=1.0)
    gate_baseline_margin: float = Field(0.0, ge=0.0)
    #: users with both a click and a non-click among the held-out rows needed for the GAUC checks
    gate_min_users: int = Field(20, ge=1)
    torch_threads: int | None = Field(1, ge=1)
    log_every_steps: int = Field(50, ge=1)
    progress: bool = True
    prerank: PrerankConfig = PrerankConfig()

    @field_validator("calibration_tasks")
    @classmethod
    def _binary_tasks(cls, v: list[str]) -> list[str]:
        bad = sorted(set(v) - set(RANKING_TASKS[:5]))
        if bad:
            raise ValueError(f"calibration_tasks: {', '.join(bad)} not a binary task ({', '.join(RANKING_TASKS[:5])})")
        return v

    @field_validator("task_weights", "fusion_weights")
    @classmethod
    def _known_tasks(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(set(v) - set(RANKING_TASKS))
        if bad:
            raise ValueError(f"unknown task(s) {', '.join(bad)}; tasks: {', '.join(RANKING_TASKS)}")
        return v


class IndexConfig(_Model):
    """faiss item index: exact inner product up to ``exact_max_items`` items, else ``kind``."""

    exact_max_items: int = Field(200_000, ge=0)
    kind: Literal["hnsw", "ivf"] = "hnsw"
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_construction: int = Field(200, ge=8)
    hnsw_ef_search: int = Field(256, ge=8)
    #: IVF lists; null = 4 * sqrt(n_items)
    ivf_nlist: int | None = Field(None, ge=1)
    ivf_nprobe: int = Field(32, ge=1)
    #: vectors the IVF quantiser is trained on (a seeded sample)
    ivf_train_size: int = Field(100_000, ge=1000)
    #: recall check: users sampled, depth k, floor below which the stage fails
    recall_sample_users: int = Field(1000, ge=1)
    recall_k: int = Field(100, ge=1)
    min_recall: float = Field(0.95, ge=0.0, le=1.0)
    #: length of recall_two_tower lists; null = recall.top_n
    top_n: int | None = Field(None, ge=1)
    search_batch_users: int = Field(4096, ge=1)
    seed: int = 11


class PublishConfig(_Model):
    """One release per date under ``<warehouse.root>/published/`` (or ``root``); one pointer switched atomically."""

    #: the published area (releases + pointer); any path or URI of :mod:`recsys_batch.io.fs` (e.g. a
    #: serving bucket ``s3a://serving/recsys``); ``null`` = ``<warehouse.root>/published``
    root: str | None = None
    #: releases kept (newest first; the current one is never removed)
    keep_releases: int = Field(7, ge=1)
    #: Delta tables copied into the release (partition dt = D); a missing optional one is skipped with a warning
    tables: list[str] = Field(default_factory=lambda: ["recall_two_tower", "item_embeddings"])
    optional_tables: list[str] = Field(default_factory=lambda: [
        "itemcf_topk", "swing_topk", "usercf_topk", "recall_itemcf", "recall_swing", "recall_usercf",
        "recall_popular", "user_embeddings", "recall_merged", "exposure_bloom", "recall_hot", "recall_fresh",
        "recall_author", "recall_similar_author", "recall_geo", "recall_new_users", "item2vec_topk",
        "recall_item2vec", "recall_ease", "recall_als", "sequential_topk", "recall_sequential"])
    #: evaluate the new model on D's held-out hours and refuse to publish a bad one (recsys_batch.publish.gate)
    gate: bool = True
    #: the metric the gate compares (one of recall@K / ndcg@K with K in gate_ks)
    gate_metric: str = "recall@50"
    gate_ks: list[int] = Field(default_factory=lambda: [20, 50])
    #: refuse when new < previous * (1 - gate_tolerance) (relative drop against yesterday's model)
    gate_tolerance: float = Field(0.05, ge=0.0, le=1.0)
    #: refuse when new < popular * (1 + gate_popular_margin): a model must beat the popular baseline
    gate_popular_margin: float = Field(0.0, ge=0.0)
    #: refuse when the held-out set has fewer users: the standard error of a mean recall over n users is up
    #: to 0.5 / sqrt(n) -- 0.05 at 100 users, 0.17 at 9, more than a useless model's gap to popular
    gate_min_users: int = Field(100, ge=1)
    #: absolute floor on gate_metric (null = none): refuse when new < it; a first model (no earlier
    #: checkpoint to compare with) is published only with a floor set here or with force
    gate_min_metric: float | None = Field(None, ge=0.0, le=1.0)
    #: held-out users evaluated by the gate (a seeded sample); at least gate_min_users
    gate_max_users: int = Field(5000, ge=1)
    #: publish even if the gate refuses (the refusal and its reasons are still recorded in the manifest)
    force: bool = False
    #: publish a date older than the live release's (moves serving back); otherwise refused -- use rollback
    allow_older: bool = False
    seed: int = 5

    @model_validator(mode="after")
    def _gate_users(self) -> PublishConfig:
        if self.gate_max_users < self.gate_min_users:
            raise ValueError(f"publish.gate_max_users ({self.gate_max_users}) < publish.gate_min_users "
                             f"({self.gate_min_users}): the gate could never evaluate enough users")
        k = self.gate_metric.split("@")
        if len(k) != 2 or k[0] not in ("recall", "ndcg") or not k[1].isdigit() or int(k[1]) not in self.gate_ks:
            raise ValueError(f"publish.gate_metric {self.gate_metric!r} must be recall@K or ndcg@K with K in "
                             f"publish.gate_ks {self.gate_ks}")
        return self


class RunsConfig(_Model):
    """The ``_runs`` records (:mod:`recsys_batch.runs`)."""

    #: a start record with no end record older than this is shown as ``killed?`` (and a backfill re-runs
    #: it); younger, ``running`` (a backfill refuses to start it twice unless --force). On the recording
    #: host a dead pid shows ``killed`` at once. Default: conf/airflow.yaml's execution_timeout_minutes.
    stale_running_minutes: float = Field(240.0, ge=0)
    #: per-stage overrides, e.g. {train: 720}
    stale_running_minutes_by_stage: dict[str, float] = Field(default_factory=dict)

    @field_validator("stale_running_minutes_by_stage")
    @classmethod
    def _known_stages(cls, v: dict[str, float]) -> dict[str, float]:
        from recsys_batch.pipeline import STAGE_BY_NAME

        bad = sorted(set(v) - set(STAGE_BY_NAME))
        if bad:
            raise ValueError(f"unknown stage(s) {', '.join(bad)}; stages: {', '.join(STAGE_BY_NAME)}")
        if any(m < 0 for m in v.values()):
            raise ValueError("minutes must be >= 0")
        return v

    def running_timeout_minutes(self, stage: str) -> float:
        return self.stale_running_minutes_by_stage.get(stage, self.stale_running_minutes)


class Config(_Model):
    warehouse: WarehouseConfig = WarehouseConfig()
    spark: SparkConfig = SparkConfig()
    sources: SourcesConfig = SourcesConfig()
    events: EventsConfig = EventsConfig()
    ingest: IngestConfig = IngestConfig()
    matrix: MatrixConfig = MatrixConfig()
    itemcf: ItemCFConfig = ItemCFConfig()
    swing: SwingConfig = SwingConfig()
    usercf: UserCFConfig = UserCFConfig()
    recall: RecallConfig = RecallConfig()
    merge: MergeConfig = MergeConfig()
    recall_rules: RulesConfig = RulesConfig()
    latent: LatentConfig = LatentConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    train: TrainConfig = TrainConfig()
    ranking: RankingConfig = RankingConfig()
    index: IndexConfig = IndexConfig()
    publish: PublishConfig = PublishConfig()
    features: FeaturesConfig = FeaturesConfig()
    samples: SamplesConfig = SamplesConfig()
    generate: GenerateConfig = GenerateConfig()
    runs: RunsConfig = RunsConfig()

    def config_hash(self) -> str:
        """Stable short hash of the effective config (run records, manifests)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------
# loading


def conf_dir() -> Path:
    return Path(os.environ.get(CONF_DIR_ENV, DEFAULT_CONF_DIR))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"matrix.half_life_days=3"`` -> (["matrix", "half_life_days"], 3)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key.path=value, got {item!r}")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set has an empty key in {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {e}") from e
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for item in overrides:
        parts, value = parse_override(item)
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {'.'.join(parts)}: {p} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def resolve_conf_file(conf: str | os.PathLike[str] | None) -> Path | None:
    """``None`` -> no overlay; ``"local"`` -> <conf_dir>/local.yaml; anything else is a path."""
    if conf is None:
        return None
    p = Path(conf)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return conf_dir() / f"{conf}.yaml"


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        else:
            lines.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(conf: str | os.PathLike[str] | None = None, overrides: list[str] | None = None,
                base: bool = True) -> Config:
    """Load base.yaml + overlay + overrides into a validated, frozen :class:`Config`."""
    overlay = resolve_conf_file(conf)
    data: dict[str, Any] = {}
    if base:
        base_file = (overlay.parent if overlay else conf_dir()) / "base.yaml"
        if base_file.exists():
            data = _read_yaml(base_file)
    if overlay is not None:
        data = deep_merge(data, _read_yaml(overlay))
    data = apply_overrides(data, overrides or [])
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e)) from None
