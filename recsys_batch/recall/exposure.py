"""The exposure filter: one Bloom filter per user of the items shown to them in the last N days.

Built offline on Spark (``exposure_bloom``, one row per user), published with the release, and used by the
merge (:mod:`recsys_batch.recall.merge`) to drop what the user has already been shown. A Bloom filter never
misses an inserted item (no false negatives); it reports a not-shown item as shown with probability ~p.

**Sizing** (per user, n = the user's distinct exposed items after the cap)::

    m = ceil(-n ln p / (ln 2)^2)      bits   (Bloom 1970; the m minimising the FPR for n items at k optimal)
    k = round((m / n) ln 2)           hash functions (round half up, at least 1)
    m_bits = 64 * ceil(m / 64)        bits stored: rbloom keeps whole 64-bit words, so the FPR is <= p's

Expected FPR of a filter: (1 - exp(-k n / m_bits))^k. The filters are built with rbloom (Rust, maintained
on PyPI) around a *stable* hash: rbloom's default is Python's ``hash()``, which is salted per process
(``PYTHONHASHSEED``), so a filter built on an executor could not be read anywhere else.

**Serving-side spec** (``FORMAT``; what a Java / Go server implements to test ``item_id`` against ``bloom``)::

    bytes     = k as uint64 little-endian (8 bytes) || bit array of m_bits bits (m_bits / 8 bytes)
                bit j is bit (j mod 8) (least significant first) of byte 8 + j div 8
    s_0       = the first 16 bytes of SHA-256(UTF-8(item_id)), big-endian, as an unsigned 128-bit integer
    s_i       = (s_{i-1} * 47026247687942121848144207491837418733 + 1) mod 2^128     for i = 1 .. k
    index_i   = ((s_i >> 32) mod 2^64) mod m_bits
    exposed   = every bit index_1 .. index_k is set

(rbloom's own layout: its 128-bit LCG seeded with our hash, and ``save_bytes``. Java: ``BigInteger`` or two
``long`` halves with ``Math.multiplyHigh``; Go: ``math/bits.Mul64``.) :func:`bloom_indexes` is that spec in
plain Python and the tests check it against rbloom bit for bit. In Python: ``load_bloom(bytes)``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
from datetime import date
from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_batch.config import MergeConfig
from recsys_batch.io.tables import require_columns
from recsys_batch.matrix import window_bounds
from recsys_batch.schemas import EXPOSURE_BLOOM, Col

log = logging.getLogger(__name__)

#: name of the serialized layout above (goes into the metrics report next to the table)
FORMAT = "rbloom-le64k-sha256-lcg128-v1"
LCG_MULTIPLIER = 47026247687942121848144207491837418733
_U128, _U64 = (1 << 128) - 1, (1 << 64) - 1
_HEADER = struct.Struct("<Q")
_LN2 = math.log(2.0)
#: probe ids start with NUL, which no ingested item id holds
PROBE_PREFIX = "\x00probe:"
_LAST = "_last_ts"
_RN = "_rn"


# ---- the filter (plain Python: executors, tests and serving in another process) -------------------------

def bloom_size(n: int, p: float) -> tuple[int, int]:
    """(m, k) of a Bloom filter for ``n`` items at false-positive rate ``p``: m = ceil(-n ln p / (ln 2)^2),
    k = round((m / n) ln 2) (half up, at least 1)."""
    if n < 1:
        raise ValueError(f"bloom_size needs n >= 1 items, got {n}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"bloom_size needs 0 < p < 1, got {p}")
    m = math.ceil(-n * math.log(p) / (_LN2 * _LN2))
    k = max(1, math.floor(m / n * _LN2 + 0.5))
    return m, k


def storage_bits(m: int) -> int:
    """Bits actually stored (and indexed modulo): m rounded up to whole 64-bit words."""
    return 64 * -(-m // 64)


def expected_fpr(n: int, m_bits: int, k: int) -> float:
    """(1 - exp(-k n / m_bits))^k: the false-positive rate of a filter holding n items."""
    return (1.0 - math.exp(-k * n / m_bits)) ** k if n else 0.0


def stable_hash(item_id: str) -> int:
    """The first 16 bytes of SHA-256(UTF-8(item_id)) as a signed 128-bit int (what rbloom's hash_func
    returns; rbloom reinterprets it as unsigned). Identical in every process and language."""
    return int.from_bytes(hashlib.sha256(item_id.encode("utf-8")).digest()[:16], "big", signed=True)


def new_bloom(m_bits: int, k: int) -> Any:
    """An empty rbloom filter with exactly ``m_bits`` (a multiple of 64) bits and ``k`` hashes.

    rbloom's constructor derives m and k itself (truncating k); its documented ``load_bytes`` takes them
    from the serialized form instead, so the sizing above is the one used.
    """
    from rbloom import Bloom

    if m_bits % 64 or m_bits <= 0 or k < 1:
        raise ValueError(f"new_bloom needs m_bits a positive multiple of 64 and k >= 1, got {m_bits}, {k}")
    return Bloom.load_bytes(_HEADER.pack(k) + bytes(m_bits // 8), stable_hash)


def build_bloom(items: list[str], p: float) -> tuple[Any, int, int]:
    """(filter, m_bits, k) holding ``items`` (distinct), sized for len(items) at rate ``p``."""
    m, k = bloom_size(len(items), p)
    m_bits = storage_bits(m)
    bloom = new_bloom(m_bits, k)
    bloom.update(items)
    return bloom, m_bits, k


def load_bloom(data: bytes) -> Any:
    """A filter from its ``exposure_bloom.bloom`` bytes, in any process (``item in filter``)."""
    from rbloom import Bloom

    return Bloom.load_bytes(bytes(data), stable_hash)


def bloom_indexes(item_id: str, k: int, m_bits: int) -> list[int]:
    """The ``k`` bit positions of ``item_id`` in an ``m_bits`` filter: the serving spec of the module doc."""
    s = stable_hash(item_id) & _U128
    out = []
    for _ in range(k):
        s = (s * LCG_MULTIPLIER + 1) & _U128
        out.append(((s >> 32) & _U64) % m_bits)
    return out


def bloom_contains(data: bytes, item_id: str) -> bool:
    """The serving spec without rbloom: is every bit of ``item_id`` set in the serialized filter?"""
    (k,) = _HEADER.unpack_from(data, 0)
    bits = memoryview(data)[_HEADER.size:]
    m_bits = len(bits) * 8
    return all(bits[j >> 3] >> (j & 7) & 1 for j in bloom_indexes(item_id, k, m_bits))


def probe_ids(user_id: str, count: int) -> list[str]:
    """``count`` ids that are no item (they start with NUL): probes for the measured FPR of a user's filter."""
    return [f"{PROBE_PREFIX}{user_id}:{j}" for j in range(count)]


# ---- Spark ------------------------------------------------------------------------------------------------

def exposed_items(events: DataFrame, run_date: date, cfg: MergeConfig) -> DataFrame:
    """(user_id, item_id, last_ts): distinct items shown (``exposure_event``) to each user with ts in the
    ``exposure_days`` ending at D, at most ``max_exposed_items_per_user`` per user, newest first (last_ts
    desc, item_id asc). The cap bounds one user's filter (and the memory of its task); an item shown
    before the newest N may come back in the lists.
    Cost: one aggregation of the window's impressions on (user, item), one window on user.
    """
    require_columns(events, [Col.USER, Col.ITEM, Col.EVENT, Col.TS], table="events", where="exposure filter")
    start, end = window_bounds(run_date, cfg.exposure_days)
    ts = F.unix_micros(F.col(Col.TS))
    shown = (events.where((F.col(Col.EVENT) == F.lit(cfg.exposure_event))
                          & (ts >= F.lit(int(start.timestamp()) * 1_000_000))
                          & (ts < F.lit(int(end.timestamp()) * 1_000_000)))
             .groupBy(Col.USER, Col.ITEM).agg(F.max(Col.TS).alias(_LAST)))
    w = Window.partitionBy(Col.USER).orderBy(F.col(_LAST).desc(), F.col(Col.ITEM).asc())
    return (shown.withColumn(_RN, F.row_number().over(w)).where(F.col(_RN) <= cfg.max_exposed_items_per_user)
            .select(Col.USER, Col.ITEM, F.col(_LAST).alias(Col.LAST_TS)))


def _build_user_filter(pdf, p: float, probes: int):  # noqa: ANN001, ANN202 - pandas in, pandas out
    import pandas as pd

    user = pdf[Col.USER].iloc[0]
    shown = set(pdf[Col.ITEM])
    items = sorted(shown)
    bloom, m_bits, k = build_bloom(items, p)
    probe = [x for x in probe_ids(user, probes) if x not in shown]
    hits = sum(1 for x in probe if x in bloom)
    return pd.DataFrame({Col.USER: [user], Col.BLOOM: [bloom.save_bytes()], Col.N_ITEMS: [len(items)],
                         Col.M_BITS: [m_bits], Col.K_HASHES: [k], Col.FP_RATE: [p], Col.PROBES: [len(probe)],
                         Col.PROBE_HITS: [hits]})


def build_exposure_bloom(exposed: DataFrame, cfg: MergeConfig) -> DataFrame:
    """One filter per user of ``exposed`` (:func:`exposed_items`): schema ``EXPOSURE_BLOOM``.

    bloom = the serialized filter (module doc), n_items = n, m_bits, k_hashes, fp_rate = the target p,
    probes / probe_false_positives = ``fpr_probes_per_user`` ids known not shown and how many of them the
    filter reports as shown (the measured FPR is their ratio over all users).
    Cost: one shuffle of the capped exposures on user (groupBy + applyInPandas: a user's items are in one
    task, at most ``max_exposed_items_per_user``); per user one SHA-256 and k LCG steps per item and probe,
    ~1.44 log2(1/p) bits per item stored (9.6 bits = 1.2 bytes per item at p = 1 %, + 8 bytes header).
    Nothing is collected to the driver.
    """
    require_columns(exposed, [Col.USER, Col.ITEM], table="exposed items", where="exposure filter")
    p, probes = cfg.bloom_fp_rate, cfg.fpr_probes_per_user

    def build(pdf):  # noqa: ANN001, ANN202 - a plain function: Spark infers nothing from a partial's hints
        return _build_user_filter(pdf, p, probes)

    return exposed.select(Col.USER, Col.ITEM).groupBy(Col.USER).applyInPandas(build, EXPOSURE_BLOOM)


def _drop_user_exposed(cands, blooms):  # noqa: ANN001, ANN202
    if cands.empty or blooms.empty:
        return cands
    bloom = load_bloom(blooms[Col.BLOOM].iloc[0])
    keep = [item not in bloom for item in cands[Col.ITEM]]
    return cands[keep]


def drop_exposed(candidates: DataFrame, blooms: DataFrame) -> DataFrame:
    """Rows of ``candidates`` (user_id, item_id, ...) whose item the user's filter in ``blooms``
    (``exposure_bloom``) does not report as shown; a user without a filter keeps every row.

    A shown item is always dropped; a not-shown one is dropped with probability ~ the filter's FPR.
    Cost: cogroup on user (one shuffle of the candidates and of the filters), per candidate one SHA-256 and
    k bit tests.
    """
    require_columns(candidates, [Col.USER, Col.ITEM], table="recall candidates", where="exposure filter")
    require_columns(blooms, [Col.USER, Col.BLOOM], table="exposure_bloom", where="exposure filter")
    return (candidates.groupBy(Col.USER)
            .cogroup(blooms.select(Col.USER, Col.BLOOM).groupBy(Col.USER))
            .applyInPandas(_drop_user_exposed, candidates.schema))


def bloom_metrics(blooms: DataFrame) -> dict[str, Any]:
    """Totals of an ``exposure_bloom`` partition (one aggregated row): users, items, bytes, probes, false
    positives, the measured FPR (false positives / probes), the expected FPR of the same filters (the mean
    of (1 - exp(-k n / m_bits))^k over the probes) and the target p."""
    kn = F.col(Col.K_HASHES) * F.col(Col.N_ITEMS) / F.col(Col.M_BITS)
    expected = F.pow(1.0 - F.exp(-kn), F.col(Col.K_HASHES))
    row = blooms.agg(
        F.count(F.lit(1)).alias("users"), F.sum(Col.N_ITEMS).alias("items"),
        F.sum(F.length(Col.BLOOM)).alias("bytes"), F.sum(Col.PROBES).alias("probes"),
        F.sum(Col.PROBE_HITS).alias("false_positives"), F.sum(expected * F.col(Col.PROBES)).alias("_exp"),
        F.max(Col.FP_RATE).alias("target_fp_rate"), F.max(Col.N_ITEMS).alias("max_items_per_user"),
    ).first()
    probes = int(row["probes"] or 0)
    return {
        "format": FORMAT, "users": int(row["users"]), "items": int(row["items"] or 0),
        "bytes": int(row["bytes"] or 0), "max_items_per_user": int(row["max_items_per_user"] or 0),
        "probes": probes, "false_positives": int(row["false_positives"] or 0),
        "measured_fp_rate": (row["false_positives"] / probes) if probes else None,
        "expected_fp_rate": (row["_exp"] / probes) if probes else None,
        "target_fp_rate": row["target_fp_rate"],
    }


__all__ = ["FORMAT", "bloom_contains", "bloom_indexes", "bloom_metrics", "bloom_size", "build_bloom",
           "build_exposure_bloom", "drop_exposed", "expected_fpr", "exposed_items", "load_bloom", "new_bloom",
           "probe_ids", "stable_hash", "storage_bits"]
