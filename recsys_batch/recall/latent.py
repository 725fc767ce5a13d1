"""Latent-factor, embedding and sequence recall channels: item2vec, EASE, ALS, sequential rules (stage ``latent``).

* **item2vec** (Barkan & Koenigstein 2016): skip-gram vectors (Spark ML ``Word2Vec``) learnt from the users'
  sessions, exact cosine kNN with faiss -> ``item2vec_topk`` (schema ``ITEM_SIM``), scored from the user's
  last-N like ItemCF (:func:`recsys_batch.recall.channels.item_based_recall`) -> ``recall_item2vec``.
* **sequential rules** (Ludewig & Jannach 2018): directed "j soon after i" weights from the same sessions,
  normalised per i -> ``sequential_topk``, scored from the user's newest items with recency-rank weights ->
  ``recall_sequential`` (:func:`sequential_similarity`).
* **EASE** (Steck 2019): a closed-form item-item regression over the binary user-item matrix of the
  ``max_items`` most popular items, inverted on the driver, scored exactly in Spark tasks -> ``recall_ease``.
* **ALS** (Hu, Koren & Volinsky 2008): Spark ML ``ALS(implicitPrefs=True)`` on presence, the user x item
  inner products scored in the same tasks -> ``recall_als``.

Exact dense scoring (EASE, ALS): the item-side matrix (B, n x n, or the item factors, n x rank) is written
once to a staging folder; each ``mapInArrow`` task loads it (memory-mapped when local) and scores its users
in batches, masks the items each user has, and keeps the top ``top_n`` (score desc, item_id asc; scores
compared at 12 significant digits). No candidate pair is shuffled.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_batch.config import ALSConfig, EaseConfig, Item2VecConfig, MatrixConfig, RecallConfig, SequentialConfig
from recsys_batch.io.tables import require_columns
from recsys_batch.matrix import positive_window_events
from recsys_batch.recall.channels import item_based_recall
from recsys_batch.recall.common import empty_recall, restrict_users
from recsys_batch.schemas import ITEM_SIM, RECALL, Col
from recsys_batch.similarity.common import arrow_fs, delete_path, round_scores

log = logging.getLogger(__name__)

SESSION, ITEMS = "session", "items"
_TS, _IDX, _SEEN, _VEC, _W, _GAP = "_ts", "_i", "_seen", "_vec", "_w", "_gap"
_MATRIX_FILE, _ITEMS_FILE = "m.npy", "items.arrow"


# ---- item2vec ----------------------------------------------------------------------------------------


def item_sessions(events: DataFrame, matrix: DataFrame, weights: dict[str, float], run_date, mcfg: MatrixConfig,
                  gap_minutes: float) -> DataFrame:
    """The users' sessions of the matrix window: (user_id, session, items array<string>).

    Positive events of the matrix window (:func:`recsys_batch.matrix.positive_window_events`), restricted to
    the (user, item) pairs of the capped ``user_item_matrix`` (a heavy user contributes at most
    ``matrix.max_items_per_user`` distinct items), ordered by ts then item_id. A new session starts when
    the gap to the user's previous event exceeds ``gap_minutes``; within a session an item is kept at its
    first occurrence (a click then a like is one token); sessions of fewer than two items are dropped (no
    context). ``session`` numbers a user's sessions 1, 2, ... in time order.
    Cost: a semi join with the matrix, one shuffle on user (window), one aggregation on (user, session).
    """
    require_columns(events, [Col.USER, Col.ITEM, Col.EVENT, Col.TS], table="events", where="item2vec sessions")
    require_columns(matrix, [Col.USER, Col.ITEM], table="user_item_matrix", where="item2vec sessions")
    pos = positive_window_events(events, weights, run_date, mcfg)
    pos = pos.join(matrix.select(Col.USER, Col.ITEM), on=[Col.USER, Col.ITEM], how="left_semi")
    gap_us = int(round(gap_minutes * 60 * 1_000_000))
    w = Window.partitionBy(Col.USER).orderBy(F.col(_TS).asc(), F.col(Col.ITEM).asc())
    prev = F.lag(_TS).over(w)
    starts = F.when(prev.isNull() | (F.col(_TS) - prev > F.lit(gap_us)), 1).otherwise(0)
    s = (pos.select(Col.USER, Col.ITEM, F.unix_micros(F.col(Col.TS)).alias(_TS))
         .withColumn("_start", starts)
         .withColumn(SESSION, F.sum("_start").over(w.rowsBetween(Window.unboundedPreceding, Window.currentRow))))
    ordered = F.sort_array(F.collect_list(F.struct(F.col(_TS), F.col(Col.ITEM))))
    return (s.groupBy(Col.USER, SESSION)
            .agg(F.array_distinct(F.transform(ordered, lambda x: x[Col.ITEM])).alias(ITEMS))
            .where(F.size(ITEMS) >= 2)
            .select(Col.USER, F.col(SESSION).cast("int").alias(SESSION), ITEMS))


def item2vec_vectors(sessions: DataFrame, cfg: Item2VecConfig, seed: int) -> tuple[list[str], np.ndarray]:
    """Skip-gram item vectors from ``sessions`` (Spark ML ``Word2Vec``): (item ids ascending, vectors n x d).

    Each session is a sentence; an item seen fewer than ``min_count`` times gets no vector. Deterministic for a
    seed with ``num_partitions = 1``: the sessions enter as one partition sorted by (user, session), so the
    vocabulary, the sentence order and the per-partition random streams are the same every run (with more
    partitions the partial vectors are averaged in shuffle order, and the result varies in the last bits).
    Spark's Word2Vec is skip-gram with hierarchical softmax and no sub-sampling of frequent tokens.
    Cost: (tokens x window_size x log2(vocabulary) x vector_size) per iteration on ``num_partitions`` tasks
    (one core by default: ~1e8 tokens-window pairs a minute); the vectors (n x d floats) reach the driver.
    """
    from pyspark.ml.feature import Word2Vec

    require_columns(sessions, [Col.USER, SESSION, ITEMS], table="sessions", where="item2vec")
    ordered = sessions.orderBy(Col.USER, SESSION).select(ITEMS).coalesce(1)
    if ordered.limit(1).count() == 0:
        return [], np.zeros((0, cfg.vector_size), np.float32)
    w2v = Word2Vec(vectorSize=cfg.vector_size, windowSize=cfg.window_size, minCount=cfg.min_count,
                   maxIter=cfg.max_iter, stepSize=cfg.step_size, numPartitions=cfg.num_partitions, seed=seed,
                   inputCol=ITEMS, outputCol="_w2v")
    try:
        model = w2v.fit(ordered)
    except Exception as e:  # noqa: BLE001 - Spark says "vocabulary size should be > 0" as a JVM error
        if "vocabulary size" in str(e).lower():
            log.info("item2vec: no item occurs %s times in the sessions", cfg.min_count)
            return [], np.zeros((0, cfg.vector_size), np.float32)
        raise
    from pyspark.ml.functions import vector_to_array

    t = (model.getVectors().select(F.col("word").alias(Col.ITEM), vector_to_array("vector", "float32").alias(_VEC))
         .orderBy(Col.ITEM).toArrow())
    ids = t.column(Col.ITEM).to_pylist()
    vec = t.column(_VEC).combine_chunks()
    x = np.asarray(vec.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(ids), cfg.vector_size)
    return ids, x


def cosine_neighbours(item_ids: list[str], vectors: np.ndarray, k: int, batch: int = 65_536
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours of every item: (item row, neighbour row, score, rank) arrays.

    Exact inner product (faiss ``IndexFlatIP``) on L2-normalised vectors; self pairs, zero vectors and
    cosines <= 0 are dropped; order: cosine (12 significant digits) desc, then neighbour id asc (rows are in
    ascending id order). Cost: n^2 x d flops (n = 100k, d = 64: ~6e11, minutes on one core; use an HNSW index
    beyond that), memory n x (d + 2k) x 4 bytes.
    """
    import faiss

    n = len(item_ids)
    if n == 0:
        return (np.zeros(0, np.int64),) * 2 + (np.zeros(0), np.zeros(0, np.int32))
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.where(norm > 0, x / np.where(norm > 0, norm, 1), 0).astype(np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    kk = min(k + 1, n)
    rows, cols, scores, ranks = [], [], [], []
    for s in range(0, n, batch):
        d, idx = index.search(x[s:s + batch], kk)
        q = np.repeat(np.arange(s, s + len(d)), kk)
        c, sc = idx.ravel().astype(np.int64), d.ravel().astype(np.float64)
        keep = (c >= 0) & (c != q) & (sc > 0)
        q, c, sc = q[keep], c[keep], round_scores(sc[keep])
        order = np.lexsort((c, -sc, q))
        q, c, sc = q[order], c[order], sc[order]
        starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]]) if len(q) else np.zeros(0, np.int64)
        rank = np.arange(len(q)) - np.repeat(starts, np.diff(np.r_[starts, len(q)])) + 1
        sel = rank <= k
        rows.append(q[sel]), cols.append(c[sel]), scores.append(sc[sel]), ranks.append(rank[sel].astype(np.int32))
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(scores), np.concatenate(ranks)


def neighbour_frame(spark, item_ids: list[str], rows: np.ndarray, cols: np.ndarray, scores: np.ndarray,
                    ranks: np.ndarray) -> DataFrame:
    """(row, col, score, rank) arrays -> a DataFrame of schema ``ITEM_SIM``."""
    ids = pa.array(item_ids, pa.string())
    t = pa.table({Col.ITEM: ids.take(pa.array(rows, pa.int64())), Col.NEIGHBOR: ids.take(pa.array(cols, pa.int64())),
                  Col.SCORE: pa.array(scores, pa.float64()), Col.RANK: pa.array(ranks, pa.int32())})
    if t.num_rows == 0:
        return spark.createDataFrame([], ITEM_SIM)
    return spark.createDataFrame(t.to_pandas(), ITEM_SIM)


def item2vec_similarity(sessions: DataFrame, cfg: Item2VecConfig, seed: int) -> DataFrame:
    """``item2vec_topk`` (schema ``ITEM_SIM``): per item its top-K items by cosine of the item2vec vectors.

    sim(i, j) = v_i . v_j / (|v_i| |v_j|), v = :func:`item2vec_vectors`; top ``cfg.top_k`` with sim > 0
    (:func:`cosine_neighbours`). Cost: Word2Vec training plus the n^2 d kNN on the driver.
    """
    ids, x = item2vec_vectors(sessions, cfg, seed)
    t0 = time.perf_counter()
    r, c, s, k = cosine_neighbours(ids, x, cfg.top_k)
    log.info("item2vec: %s item vectors (d=%s), kNN %.1fs, %s neighbour rows", f"{len(ids):,}", cfg.vector_size,
             time.perf_counter() - t0, f"{len(r):,}")
    return neighbour_frame(sessions.sparkSession, ids, r, c, s, k)


def item2vec_recall(matrix: DataFrame, item_sim: DataFrame, cfg: RecallConfig,
                    users: DataFrame | None = None) -> DataFrame:
    """``recall_item2vec``: ItemCF-style scoring over ``item2vec_topk``, score(u, j) = sum_{i in lastN(u)}
    r(u, i) cos(i, j) (:func:`recsys_batch.recall.channels.item_based_recall`)."""
    return item_based_recall(matrix, item_sim, cfg, users)


# ---- sequential rules ------------------------------------------------------------------------------------


def sequential_similarity(sessions: DataFrame, cfg: SequentialConfig) -> DataFrame:
    """``sequential_topk`` (schema ``ITEM_SIM``): sequential rules (SR; Kamehkhosh, Jannach & Ludewig 2017,
    Ludewig & Jannach 2018), directed and normalised per source item::

        w(i -> j) = sum over sessions s, positions p < q <= p + steps with s_p = i, s_q = j of 1 / (q - p)
        sim(i, j) = w(i -> j) / sum_j' w(i -> j')

    (the share of i's rule weight that goes to j: each seed then spreads one unit over what tends to come after
    it), the ``top_k`` j per i (sim desc, neighbor asc). Sessions: :func:`item_sessions` (first occurrence of an
    item per session, in time order). Unlike ItemCF / Swing / EASE, which see a user's items as a set, the rule
    is ordered and local: j must come soon *after* i. The pairs are counted per gap as integers and divided
    in a fixed order, so scores, ties and ranks do not depend on Spark's summation order.
    Cost: sum_s min(|s|, steps) * |s| pair rows (linear in session length: a heavy user's long session adds
    ``steps`` rows per item, never |s|^2), one aggregation on (i, j), one window on i.
    """
    pos = sessions.select(F.posexplode(ITEMS).alias(_IDX, Col.ITEM), ITEMS)
    after = F.expr(f"slice({ITEMS}, {_IDX} + 2, {cfg.steps})")  # s_{p+1} .. s_{p+steps}, 1-based
    pairs = pos.select(Col.ITEM, F.posexplode(after).alias(_GAP, Col.NEIGHBOR))
    gaps = range(1, cfg.steps + 1)
    counts = pairs.groupBy(Col.ITEM, Col.NEIGHBOR).agg(
        *[F.sum(F.when(F.col(_GAP) == g - 1, 1).otherwise(0)).alias(f"_c{g}") for g in gaps])
    by_item = Window.partitionBy(Col.ITEM)
    # integer counts per gap, divided in a fixed order: the same doubles whatever order Spark summed in
    w = sum((F.col(f"_c{g}") / g for g in gaps), F.lit(0.0))
    total = sum((F.sum(f"_c{g}").over(by_item) / g for g in gaps), F.lit(0.0))
    ranked = by_item.orderBy(F.col(Col.SCORE).desc(), F.col(Col.NEIGHBOR).asc())
    return (counts.withColumn(Col.SCORE, w / total)
            .withColumn(Col.RANK, F.row_number().over(ranked))
            .where(F.col(Col.RANK) <= cfg.top_k)
            .select(Col.ITEM, Col.NEIGHBOR, Col.SCORE, F.col(Col.RANK).cast("int").alias(Col.RANK)))


def sequential_recall(matrix: DataFrame, rules: DataFrame, cfg: SequentialConfig, rc: RecallConfig,
                      users: DataFrame | None = None) -> DataFrame:
    """``recall_sequential``: score(u, j) = sum_{p < lastn} 0.5 ** (p / h) sim(i_p, j), i_0, i_1, ... the user's
    matrix items newest first (``cfg.lastn_items``, h = ``cfg.seed_half_life_items``), j not seen
    (:func:`recsys_batch.recall.channels.item_based_recall`). The seed weights decay with recency rank, not
    with the matrix score: the next item depends on the last ones, however strong an older interaction was."""
    return item_based_recall(matrix, rules, rc, users, lastn_items=cfg.lastn_items,
                             seed_half_life_items=cfg.seed_half_life_items)


# ---- EASE ------------------------------------------------------------------------------------------------


def popular_items(matrix: DataFrame, max_items: int) -> list[str]:
    """The ``max_items`` items with most matrix users |N(i)| (ties: item_id asc), returned in ascending id
    order (row j of the model = the j-th id). Cost: one aggregation on item, a top-k; n ids reach the driver."""
    require_columns(matrix, [Col.USER, Col.ITEM], table="user_item_matrix", where="popular items")
    top = (matrix.groupBy(Col.ITEM).agg(F.count(F.lit(1)).alias("_n"))
           .orderBy(F.col("_n").desc(), F.col(Col.ITEM).asc()).limit(max_items).select(Col.ITEM).collect())
    return sorted(r[Col.ITEM] for r in top)


def _index_frame(spark, item_ids: list[str]) -> DataFrame:
    return spark.createDataFrame(list(enumerate(item_ids)),
                                 T.StructType([T.StructField(_IDX, T.IntegerType(), False),
                                               T.StructField(Col.ITEM, T.StringType(), False)]))


def ease_gram(matrix: DataFrame, item_ids: list[str], max_items_per_user: int) -> np.ndarray:
    """G = X^T X (n x n, float64) over the binary matrix X restricted to ``item_ids`` (row/column j = item_ids[j]).

    G_ij = |{u : i, j in I_cap(u)}|, I_cap(u) = u's ``max_items_per_user`` most recent items among
    ``item_ids`` (last_ts desc, item_id asc) -- the heavy-user cap of the similarity jobs.
    Computed in Spark: a broadcast join with the n ids, a window on user for the cap, a self join on user
    keeping i <= j and a count per (i, j) (map-side combined); only the upper triangle, at most n(n+1)/2
    entries (12 bytes each through Arrow), reaches the driver. Cost: sum_u min(|I(u)|, cap)^2 / 2 pair rows.
    """
    require_columns(matrix, [Col.USER, Col.ITEM, Col.LAST_TS], table="user_item_matrix", where="EASE")
    n = len(item_ids)
    spark = matrix.sparkSession
    x = matrix.select(Col.USER, Col.ITEM, Col.LAST_TS).join(F.broadcast(_index_frame(spark, item_ids)), on=Col.ITEM)
    w = Window.partitionBy(Col.USER).orderBy(F.col(Col.LAST_TS).desc(), F.col(Col.ITEM).asc())
    x = x.withColumn("_rn", F.row_number().over(w)).where(F.col("_rn") <= max_items_per_user).select(Col.USER, _IDX)
    y = x.select(Col.USER, F.col(_IDX).alias("_j"))
    pairs = (x.join(y, on=Col.USER).where(F.col(_IDX) <= F.col("_j"))
             .groupBy(_IDX, "_j").agg(F.count(F.lit(1)).cast("double").alias("_c")))
    t = pairs.toArrow()
    g = np.zeros((n, n), np.float64)
    i, j = t.column(_IDX).to_numpy(), t.column("_j").to_numpy()
    c = t.column("_c").to_numpy()
    g[i, j] = c
    g[j, i] = c
    return g


def ease_weights(gram: np.ndarray, l2: float, dtype: str = "float64") -> np.ndarray:
    """EASE item-item weights (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data", eq. 8):

        P = (G + lambda I)^-1,   B = I - P diag(1 / diag(P)),  i.e. B_ij = -P_ij / P_jj (i != j), B_jj = 0

    the minimiser of ||X - X B||_F^2 + lambda ||B||_F^2 subject to diag(B) = 0. score(u, j) = (x_u B)_j.
    Cost: one n x n inversion, O(n^3) flops (n = 20k: ~1e13, minutes on a many-core driver); memory ~3 n x n
    copies at the peak (G + lambda I, its inverse, LAPACK workspace), 8 (float64) or 4 (float32) bytes each.
    """
    n = gram.shape[0]
    a = np.array(gram, dtype=np.dtype(dtype), copy=True)
    a[np.diag_indices(n)] += l2
    p = np.linalg.inv(a)
    del a
    d = np.diag(p).copy()
    p /= -d[np.newaxis, :]
    p[np.diag_indices(n)] = 0.0
    return p


def topk_rows(weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` largest positive entries of every row of a dense matrix (diagonal excluded): (row, col,
    score, rank), order score (12 significant digits) desc, col asc."""
    n = weights.shape[0]
    rows, cols, scores, ranks = [], [], [], []
    for r in range(n):
        w = weights[r].astype(np.float64)
        w[r] = 0.0
        cand = np.flatnonzero(w > 0)
        if len(cand) > k:
            th = np.partition(w[cand], len(cand) - k)[len(cand) - k]
            cand = cand[w[cand] >= th - abs(th) * 1e-9]
        sc = round_scores(w[cand])
        order = np.lexsort((cand, -sc))[:k]
        rows.append(np.full(len(order), r, np.int64)), cols.append(cand[order]), scores.append(sc[order])
        ranks.append(np.arange(1, len(order) + 1, dtype=np.int32))
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int32)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(scores), np.concatenate(ranks)


def ease_model(matrix: DataFrame, cfg: EaseConfig) -> tuple[list[str], np.ndarray]:
    """(item ids of the model in ascending order, B) for the matrix: :func:`popular_items`, :func:`ease_gram`,
    :func:`ease_weights`."""
    items = popular_items(matrix, cfg.max_items)
    t0 = time.perf_counter()
    g = ease_gram(matrix, items, cfg.max_items_per_user)
    t1 = time.perf_counter()
    b = ease_weights(g, cfg.l2, cfg.dtype)
    log.info("EASE: %s items, %s non-zero co-occurrences, gram %.1fs, inversion %.1fs (lambda %s, %s, %.0f MB)",
             f"{len(items):,}", f"{int(np.count_nonzero(g)):,}", t1 - t0, time.perf_counter() - t1, cfg.l2,
             cfg.dtype, b.nbytes / 1e6)
    return items, b


def ease_recall(matrix: DataFrame, cfg: EaseConfig, rc: RecallConfig, users: DataFrame | None = None,
                staging: str | None = None) -> DataFrame:
    """``recall_ease`` (schema ``RECALL``): score(u, j) = sum_{i in I(u)} x_u(i) B_ij over the model's items.

    ``exact``: x_u B for every item of the model (:func:`dense_recall`; x_u(i) = 0.5 ** (p_u(i) / h) for u's
    matrix items among the model's, p_u(i) = i's recency rank in u's matrix row (0 = newest),
    h = ``recency_half_life_items``; null h = 1, the paper's binary x_u), the user's items masked, top
    ``rc.top_n``. B is fitted on the binary X; only the scoring weighs recent items more, because the next
    items follow the recent ones (MovieLens-100K, newest 20 % held out, lambda 500, Recall@50 / @200: binary
    0.365 / 0.706, h = 10: 0.403 / 0.711, h = 25: 0.397 / 0.727, h = 50: 0.387 / 0.725). A rank, not an
    age: a user idle for months keeps the same weights. ``topk``: B cut to its ``top_k`` largest
    positive entries per row i (``ease_topk``) and scored like ItemCF with every matrix item of the user as a
    seed of weight 1 -- cheaper per user, but drops the negative weights (measured in the README).
    A user with none of the model's items gets no list. Returns a persisted, computed DataFrame (unpersist it).
    """
    require_columns(matrix, [Col.USER, Col.ITEM, Col.LAST_TS], table="user_item_matrix", where="EASE recall")
    spark = matrix.sparkSession
    items, b = ease_model(matrix, cfg)
    if cfg.scoring == "topk":
        sim = neighbour_frame(spark, items, *topk_rows(b, cfg.top_k))
        ones = matrix.withColumn(Col.SCORE, F.lit(1.0))
        seeds = rc.model_copy(update={"lastn_items": cfg.max_items_per_user})
        out = item_based_recall(ones, sim, seeds, users).persist(StorageLevel.MEMORY_AND_DISK)
        out.count()
        return out
    queries = _seen_lists(matrix, items, users, cfg.recency_half_life_items)
    return dense_recall(queries, b, items, "rows", rc.top_n, cfg.batch_users, staging)


def _seen_lists(matrix: DataFrame, items: list[str], users: DataFrame | None,
                half_life_items: float | None = None) -> DataFrame:
    """(user_id, _seen array<int>, _w array<double>): per user the sorted model rows of its matrix items and
    their weights, 0.5 ** (p / half_life_items) with p = the item's recency rank among all the user's matrix
    items (last_ts desc, item_id asc; 0 = newest), or 1.0 (``half_life_items`` null). Users with none: no row."""
    spark = matrix.sparkSession
    x = restrict_users(matrix.select(Col.USER, Col.ITEM, Col.LAST_TS), users)
    if half_life_items is None:
        x = x.withColumn(_W, F.lit(1.0))
    else:
        w = Window.partitionBy(Col.USER).orderBy(F.col(Col.LAST_TS).desc(), F.col(Col.ITEM).asc())
        x = x.withColumn(_W, F.pow(F.lit(0.5), (F.row_number().over(w) - 1) / F.lit(float(half_life_items))))
    x = x.join(F.broadcast(_index_frame(spark, items)), on=Col.ITEM)
    pairs = F.sort_array(F.collect_list(F.struct(F.col(_IDX), F.col(_W))))
    return (x.groupBy(Col.USER).agg(pairs.alias("_p"))
            .select(Col.USER, F.transform("_p", lambda e: e[_IDX]).alias(_SEEN),
                    F.transform("_p", lambda e: e[_W]).alias(_W)))


# ---- dense scoring in tasks --------------------------------------------------------------------------------


def _default_staging(spark) -> str:  # noqa: ANN001
    master = spark.sparkContext.master or ""
    if master.startswith("local"):
        import tempfile

        return tempfile.mkdtemp(prefix="recsys-latent-")
    return f"{spark.conf.get('spark.sql.warehouse.dir').rstrip('/')}/_tmp/latent/{uuid.uuid4().hex[:12]}"


def _write_staged(root: str, m: np.ndarray, item_ids: list[str]) -> None:
    import pyarrow.ipc as ipc

    fs, path = arrow_fs(root)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{_MATRIX_FILE}") as f:
        np.save(f, np.ascontiguousarray(m))
    t = pa.table({Col.ITEM: pa.array(item_ids, pa.string())})
    with fs.open_output_stream(f"{path}/{_ITEMS_FILE}") as f, ipc.new_file(f, t.schema) as w:
        w.write_table(t)


_WORKER_CACHE: dict[str, tuple[np.ndarray, pa.Array]] = {}


def _load_staged(root: str, token: str) -> tuple[np.ndarray, pa.Array]:
    """The staged matrix (memory-mapped for a local path) and item ids, once per Python worker and run."""
    if token in _WORKER_CACHE:
        return _WORKER_CACHE[token]
    import io

    import pyarrow.ipc as ipc

    fs, path = arrow_fs(root)
    if isinstance(fs, pa.fs.LocalFileSystem):
        m = np.load(f"{path}/{_MATRIX_FILE}", mmap_mode="r")
    else:
        with fs.open_input_file(f"{path}/{_MATRIX_FILE}") as f:
            m = np.load(io.BytesIO(f.read()))
    with fs.open_input_file(f"{path}/{_ITEMS_FILE}") as f:
        ids = ipc.open_file(f).read_all().column(Col.ITEM).combine_chunks()
    _WORKER_CACHE.clear()
    _WORKER_CACHE[token] = (m, ids)
    return m, ids


def top_n_masked(scores: np.ndarray, seen: list[np.ndarray], n: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``scores`` (b x items) the top ``n`` columns not in ``seen[row]``: (row, col, score, rank).

    Order: score rounded to 12 significant digits desc, then column asc (columns are in item-id order).
    """
    out = ([], [], [], [])
    for r in range(scores.shape[0]):
        s = scores[r].astype(np.float64)
        if len(seen[r]):
            s[seen[r]] = -np.inf
        k = min(n, int(np.isfinite(s).sum()))
        if k <= 0:
            continue
        th = np.partition(s, len(s) - k)[len(s) - k]
        cand = np.flatnonzero(np.isfinite(s) & (s >= th - abs(th) * 1e-9))
        sc = round_scores(s[cand])
        order = np.lexsort((cand, -sc))[:k]
        out[0].append(np.full(len(order), r, np.int64)), out[1].append(cand[order]), out[2].append(sc[order])
        out[3].append(np.arange(1, len(order) + 1, dtype=np.int32))
    if not out[0]:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int32)
    return tuple(np.concatenate(x) for x in out)  # type: ignore[return-value]


def _dense_task(root: str, token: str, kind: str, top_n: int, batch_users: int
                ) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    schema = pa.schema([(Col.USER, pa.string(), False), (Col.ITEM, pa.string(), False),
                        (Col.SCORE, pa.float64(), False), (Col.RANK, pa.int32(), False)])

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import scipy.sparse as sp

        for batch in batches:
            m, ids = _load_staged(root, token)
            n_items = len(ids)
            users = batch.column(Col.USER)
            seen_col = batch.column(_SEEN)
            for s in range(0, batch.num_rows, batch_users):
                part = seen_col.slice(s, batch_users)
                seen = [np.asarray(v, np.int64) for v in part.to_pylist()]
                if kind == "rows":  # EASE: scores = x_u B, x_u = the user's rows, weighted by _w
                    lens = [len(v) for v in seen]
                    wts = batch.column(_W).slice(s, batch_users).flatten().to_numpy(zero_copy_only=False)
                    x = sp.csr_matrix((np.asarray(wts, np.float64),
                                       np.concatenate(seen) if seen else np.zeros(0, np.int64),
                                       np.r_[0, np.cumsum(lens)]), shape=(len(seen), n_items))
                    scores = np.asarray(x @ m)
                else:  # factors: scores = q_u V^T
                    q = batch.column(_VEC).slice(s, batch_users)
                    qv = np.asarray(q.flatten().to_numpy(zero_copy_only=False), np.float64).reshape(len(seen), -1)
                    scores = qv @ np.asarray(m, np.float64).T
                r, c, sc, rk = top_n_masked(scores, seen, top_n)
                if len(r) == 0:
                    continue
                yield pa.RecordBatch.from_arrays(
                    [users.slice(s, batch_users).take(pa.array(r)), ids.take(pa.array(c)), pa.array(sc, pa.float64()),
                     pa.array(rk, pa.int32())], schema=schema)

    return run


def dense_recall(queries: DataFrame, m: np.ndarray, item_ids: list[str], kind: str, top_n: int,
                 batch_users: int, staging: str | None = None) -> DataFrame:
    """Exact top-N per user against a dense item-side matrix, in Spark tasks: schema ``RECALL``.

    ``queries``: (user_id, _seen array<int>, _w array<double> | _vec array<float>). ``kind`` "rows": scores =
    x_u M, x_u(_seen[k]) = _w[k] (EASE, M = B, n x n); "factors": scores = q_u M^T with q_u = ``_vec`` (ALS,
    M = item factors, n x rank). The items in ``_seen`` are masked. M and the ids are staged once under
    ``staging`` (a temp folder in local mode), loaded by each Python worker (memory-mapped when local), and the
    users scored ``batch_users`` at a time (memory: batch x n x 8 bytes). Returns a persisted, computed
    DataFrame; the staging folder is gone when this returns. Cost: |users| x nnz-or-rank x n multiply-adds.
    """
    spark = queries.sparkSession
    staging = staging or _default_staging(spark)
    token = uuid.uuid4().hex
    root = f"{staging.rstrip('/')}/{token[:12]}"
    try:
        _write_staged(root, m, item_ids)
        fn = _dense_task(root, token, kind, top_n, batch_users)
        out = queries.mapInArrow(fn, RECALL).persist(StorageLevel.MEMORY_AND_DISK)
        out.count()
        return out
    finally:
        delete_path(spark, root)
        if "://" not in staging and os.path.isdir(staging) and not os.listdir(staging):
            os.rmdir(staging)


# ---- ALS ---------------------------------------------------------------------------------------------------


def als_factors(matrix: DataFrame, cfg: ALSConfig, seed: int) -> tuple[list[str], np.ndarray, DataFrame]:
    """Implicit ALS (Hu, Koren & Volinsky 2008; Spark ML ``ALS(implicitPrefs=True)``) on presence:
    (item ids ascending, item factors n x rank, user factors (user_id, _vec array<float>)).

    Minimises sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + reg (sum |x_u|^2 + sum |y_i|^2), p_ui = 1 for a matrix
    pair else 0, c_ui = 1 + alpha. Presence, not the matrix score: with the 7-day half-life an interaction a
    few months old would weigh ~0. Deterministic for a seed up to floating-point summation order.
    Cost: per iteration two least-squares sweeps, O(nnz x rank^2 + (users + items) x rank^3), each a shuffle
    of the ratings blocks (``num_blocks``); item factors (n x rank) reach the driver.
    """
    from pyspark.ml.recommendation import ALS

    require_columns(matrix, [Col.USER, Col.ITEM], table="user_item_matrix", where="ALS")
    spark = matrix.sparkSession
    pairs = matrix.select(Col.USER, Col.ITEM)
    items = sorted(r[Col.ITEM] for r in pairs.select(Col.ITEM).distinct().collect())
    umap = (pairs.select(Col.USER).distinct().orderBy(Col.USER).rdd.map(lambda r: r[0]).zipWithIndex()
            .toDF(T.StructType([T.StructField(Col.USER, T.StringType(), False),
                                T.StructField("_u", T.LongType(), False)]))
            .select(Col.USER, F.col("_u").cast("int").alias("_u")))
    ratings = (pairs.join(F.broadcast(_index_frame(spark, items)), on=Col.ITEM).join(umap, on=Col.USER)
               .select("_u", _IDX, F.lit(1.0).alias("_r")))
    als = ALS(rank=cfg.rank, maxIter=cfg.max_iter, regParam=cfg.reg_param, alpha=cfg.alpha, implicitPrefs=True,
              userCol="_u", itemCol=_IDX, ratingCol="_r", seed=seed, numUserBlocks=cfg.num_blocks,
              numItemBlocks=cfg.num_blocks, coldStartStrategy="drop")
    model = als.fit(ratings)
    t = model.itemFactors.toArrow()
    v = np.zeros((len(items), cfg.rank), np.float32)
    feats = t.column("features").combine_chunks()
    v[t.column("id").to_numpy()] = np.asarray(feats.flatten().to_numpy(zero_copy_only=False),
                                              np.float32).reshape(len(t), cfg.rank)
    users = model.userFactors.join(umap, F.col("id") == F.col("_u")).select(Col.USER, F.col("features").alias(_VEC))
    return items, v, users


def als_recall(matrix: DataFrame, cfg: ALSConfig, rc: RecallConfig, seed: int, users: DataFrame | None = None,
               staging: str | None = None) -> DataFrame:
    """``recall_als`` (schema ``RECALL``): score(u, i) = x_u . y_i (:func:`als_factors`), exact over every item
    (:func:`dense_recall`, "factors"), the user's matrix items masked, top ``rc.top_n``. Returns a persisted,
    computed DataFrame (unpersist it)."""
    spark = matrix.sparkSession
    items, v, factors = als_factors(matrix, cfg, seed)
    if not items:
        return empty_recall(spark)
    seen = _seen_lists(matrix, items, users)
    queries = restrict_users(factors, users).join(seen, on=Col.USER).select(Col.USER, _SEEN, _VEC)
    return dense_recall(queries, v, items, "factors", rc.top_n, cfg.batch_users, staging)


__all__ = ["als_factors", "als_recall", "cosine_neighbours", "dense_recall", "ease_gram", "ease_model",
           "ease_recall", "ease_weights", "item2vec_recall", "item2vec_similarity", "item2vec_vectors",
           "item_sessions", "neighbour_frame", "popular_items", "top_n_masked", "topk_rows"]
