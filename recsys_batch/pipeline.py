"""The daily pipeline as one list of stages, shared by the CLI, ``jobs/`` and the Airflow DAG.

A stage's ``run`` is ``"module:function"``, imported only when the stage runs, so reading this list
(the DAG file does) imports neither pyspark nor torch. Every Spark stage's function has the signature
``run(spark, cfg, run_date)``; a stage that needs no JVM has ``run(cfg, run_date)``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    name: str
    run: str
    upstream: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    #: stages that must have succeeded for the *previous* date (point-in-time joins of D - 1)
    prev_day: tuple[str, ...] = ()
    #: stages whose *previous*-date output the stage reads when it is there (never required): in its lineage,
    #: so re-running one of them for D - 1 after this stage ran for D makes this run stale
    reads_prev_day: tuple[str, ...] = ()
    spark: bool = True
    doc: str = ""
    #: entry point under jobs/ (spark-submit for Spark stages, plain python otherwise)
    job: str = ""

    @property
    def job_file(self) -> str:
        return self.job or f"{self.name}.py"

    def load(self) -> Any:
        module, func = self.run.split(":")
        return getattr(importlib.import_module(module), func)


STAGES: tuple[Stage, ...] = (
    Stage(
        "check_input", "recsys_batch.checks:check_input", spark=False,
        doc="fail clearly when the day's events have not arrived or are fewer than ingest.min_event_rows",
    ),
    Stage(
        "ingest", "recsys_batch.ingest:run_ingest", upstream=("check_input",),
        outputs=("events", "users", "items", "follows", "rank_logs"),
        doc="validate the day's raw inputs into Delta tables; bad rows to rejected_<table>",
    ),
    Stage(
        "matrix", "recsys_batch.matrix:run_matrix", upstream=("ingest",),
        outputs=("user_item_matrix", "user_lastn", "item_activity", "user_activity", "id_map_user",
                 "id_map_item"),
        doc="time-decayed user-item matrix over the lookback window, last-N, activity, dense ids",
    ),
    Stage(
        "itemcf", "recsys_batch.similarity.itemcf:run_itemcf", upstream=("matrix",), outputs=("itemcf_topk",),
        doc="ItemCF item-item similarity (penalised or cosine), top-K per item",
    ),
    Stage(
        "swing", "recsys_batch.similarity.swing:run_swing", upstream=("matrix",), outputs=("swing_topk",),
        doc="Swing item-item similarity, top-K per item",
    ),
    Stage(
        "usercf", "recsys_batch.similarity.usercf:run_usercf", upstream=("matrix",), outputs=("usercf_topk",),
        doc="UserCF user-user similarity, top-K per user",
    ),
    Stage(
        "features", "recsys_batch.features.stage:run_features", upstream=("matrix",),
        outputs=("user_features", "item_features"),
        doc="user/item profiles and 1/7/30-day statistics as of the end of D, fitted transforms, feature_spec.json, coverage",
    ),
    Stage(
        "samples", "recsys_batch.samples.stage:run_samples", upstream=("features",), prev_day=("matrix", "features"),
        outputs=("samples_recall", "samples_ranking"),
        doc="recall (easy + hard negatives, logQ probabilities) and ranking samples of the window ending at D, "
            "each row with the features of the day before its event (samples.window_days)",
    ),
    Stage(
        "recall", "recsys_batch.recall.stage:run_recall", upstream=("matrix", "itemcf", "swing", "usercf"),
        outputs=("recall_itemcf", "recall_swing", "recall_usercf", "recall_popular"),
        doc="top-N recall lists per channel (item-based, user-based, popular), seen items excluded",
    ),
    Stage(
        "recall_rules", "recsys_batch.recall.rules_stage:run_recall_rules", upstream=("matrix",),
        outputs=("recall_hot", "recall_fresh", "recall_author", "recall_similar_author", "recall_geo",
                 "recall_new_users"),
        doc="rule / content-based recall lists (trending, fresh items, followed and similar authors, nearby, "
            "new-user buckets), seen items excluded",
    ),
    Stage(
        "latent", "recsys_batch.recall.latent_stage:run_latent", upstream=("matrix",),
        outputs=("item2vec_topk", "recall_item2vec", "recall_ease", "recall_als", "sequential_topk",
                 "recall_sequential"),
        doc="latent-factor / embedding / sequence recall (latent.channels): item2vec kNN, EASE, implicit ALS, "
            "sequential rules",
    ),
    Stage(
        "train", "recsys_batch.training.train:run_train", upstream=("samples",), spark=False,
        job="train_two_tower.py", outputs=("item_embeddings", "user_embeddings"),
        doc="daily full retrain of the two-tower model (warm start from yesterday), item/user embeddings, user tower",
    ),
    Stage(
        "train_ranking", "recsys_batch.ranking.train:run_train_ranking", upstream=("samples",), spark=False,
        job="train_ranking.py",
        doc="daily full retrain of the multi-task ranking model (DCN-v2, DIN, MMoE/PLE; warm start from yesterday), "
            "held-out AUC/GAUC/calibration vs a logistic-regression baseline, gate, TorchScript export",
    ),
    Stage(
        "index", "recsys_batch.index.build:run_index", upstream=("train",), spark=False,
        outputs=("recall_two_tower",),
        doc="faiss item index (exact or HNSW/IVF), recall@100 check against exact search, recall_two_tower",
    ),
    Stage(
        "merge", "recsys_batch.recall.merge_stage:run_merge", upstream=("recall", "recall_rules", "latent", "index"),
        reads_prev_day=("matrix", "recall", "recall_rules", "latent", "index"),  # learned RRF weights of D
        outputs=("recall_merged", "exposure_bloom"),
        doc="per-user Bloom filter of the items shown in the exposure window; the channel lists merged with "
            "per-channel quotas (RRF or snake), exposed items dropped",
    ),
    Stage(
        "evaluate", "recsys_batch.evaluation.evaluate:run_evaluate", upstream=("recall", "index", "merge"),
        doc="offline Recall/HitRate/NDCG/MRR, user and catalog coverage, novelty: the published recall tables of D "
            "against what users did after D (evaluate.truth_days or truth_path), and the channels rebuilt on a split",
    ),
    Stage(
        "report", "recsys_batch.evaluation.html:run_report", upstream=("evaluate",), spark=False,
        doc="the evaluation of D as one self-contained HTML page (plots embedded) beside its metrics.json",
    ),
    Stage(
        "publish", "recsys_batch.publish.release:run_publish", upstream=("evaluate", "train_ranking"), spark=False,
        reads_prev_day=("recall",),  # the gate's leak-free ItemCF / popular baselines of D - 1
        doc="gate the new two-tower (refused below popular on the held-out hours, below yesterday's model beyond "
            "the tolerance, or on fewer than publish.gate_min_users users), then publish one atomic, versioned "
            "release with the recall tables and the newest ranking model its own gate accepted",
    ),
)

STAGE_BY_NAME = {s.name: s for s in STAGES}


def get_stage(name: str) -> Stage:
    try:
        return STAGE_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGE_BY_NAME)}") from None


def lineage(name: str) -> tuple[tuple[str, int], ...]:
    """Every stage whose output ``name`` reads, directly or through its upstream stages, as
    ``(stage, day offset)``: ``("ingest", 0)`` is ingest of the same date, ``("matrix", -1)`` matrix of
    the day before (a ``prev_day`` or ``reads_prev_day`` edge). Sorted by pipeline order, then offset. The run
    records use it to tell whether a stage's output is stale: built before one of these rewrote a table it reads."""
    order = {s.name: i for i, s in enumerate(STAGES)}
    seen: set[tuple[str, int]] = set()
    todo = [(name, 0)]
    while todo:
        cur, off = todo.pop()
        st = get_stage(cur)
        for nxt in [(u, off) for u in st.upstream] + [(p, off - 1) for p in st.prev_day + st.reads_prev_day]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return tuple(sorted(seen, key=lambda so: (order[so[0]], -so[1])))


def with_downstream(names: list[str] | tuple[str, ...]) -> list[str]:
    """``names`` plus every stage downstream of one of them (same-day edges), in pipeline order:
    what Airflow's "clear downstream" re-runs."""
    for n in names:
        get_stage(n)
    picked = set(names)
    for s in STAGES:  # STAGES is in topological order, so one pass closes the set
        if any(u in picked for u in s.upstream):
            picked.add(s.name)
    return [s.name for s in STAGES if s.name in picked]


#: stages whose D - 1 output the publish gate reads as its leak-free baselines (``recall_itemcf`` /
#: ``recall_popular`` of D - 1, see :mod:`recsys_batch.publish.gate`). Not a hard prerequisite of
#: publish: without ``recall_popular`` of D - 1 the gate computes the popular baseline itself from the
#: events before the held-out hours (it always has one); a missing ``recall_itemcf`` row is left out and
#: said so. The demo builds them for D - 1 so its gate table shows both.
GATE_BASELINE_STAGES = ("matrix", "itemcf", "swing", "usercf", "recall")
