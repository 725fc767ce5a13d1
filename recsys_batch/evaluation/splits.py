"""Train/test splits of the events of the matrix lookback window ending at D.

Both splits return a :class:`Split`: the train events (contract columns, to rebuild the matrix and the
channels from), the test items (user_id, item_id) and the run date to build the train matrix with.
Test items = distinct items of a user's positive (weight > 0) test events that the user has no positive
train event on, so re-consumption of a train item is never counted as a hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_batch.io.tables import require_columns
from recsys_batch.matrix import weight_column, window_bounds
from recsys_batch.schemas import Col

_EVENT_COLS = [Col.USER, Col.ITEM, Col.EVENT, Col.TS]
_W, _RN, _N = "_w", "_rn", "_n"


@dataclass(frozen=True)
class Split:
    kind: str
    #: train events (user_id, item_id, event_type, ts); the matrix transforms re-apply weights and window
    train: DataFrame
    #: distinct (user_id, item_id) held out, never a pair with a positive train event
    test: DataFrame
    #: run date the train matrix is built for (decay reference, end of the train window)
    train_date: date


def window_events(events: DataFrame, run_date: date, lookback_days: int) -> DataFrame:
    """Events with ts in [D - lookback_days + 1, D + 1) (UTC), contract columns only."""
    require_columns(events, _EVENT_COLS, table="events", where="evaluation split")
    start, end = window_bounds(run_date, lookback_days)
    us = F.unix_micros(F.col(Col.TS))
    return (events.select(*_EVENT_COLS)
            .where((us >= F.lit(int(start.timestamp()) * 1_000_000)) & (us < F.lit(int(end.timestamp()) * 1_000_000))))


def _test_items(test_events: DataFrame, train_events: DataFrame, weights: dict[str, float]) -> DataFrame:
    pos = lambda df: df.where(weight_column(weights) > 0).select(Col.USER, Col.ITEM).distinct()  # noqa: E731
    return pos(test_events).join(pos(train_events), on=[Col.USER, Col.ITEM], how="left_anti")


def split_user_chrono(events: DataFrame, weights: dict[str, float], run_date: date, lookback_days: int,
                      holdout_ratio: float) -> Split:
    """Per user, the newest share of positive events is the test part.

    Over the positive events of the window, user u with n_u events holds out its newest
    h_u = min(n_u - 1, max(1, round(holdout_ratio * n_u))) events when n_u >= 2 (at least one held out,
    at least one kept), h_u = 0 when n_u = 1 (train only). Newest = ts desc, then item_id desc, event_type
    desc (deterministic). The unit is the positive event, not the (user, item) pair, so the cut is a point
    in the user's time line and no train event is newer than a test event of the same user.
    Train = the other positive events; impressions are dropped (weight 0, they never enter the matrix).
    The train matrix is built for D (decay relative to the end of D).
    Cost: one shuffle on user (window count + row_number).
    """
    win = window_events(events, run_date, lookback_days)
    pos = win.withColumn(_W, weight_column(weights)).where(F.col(_W) > 0).drop(_W)
    by_user = Window.partitionBy(Col.USER)
    newest = by_user.orderBy(F.col(Col.TS).desc(), F.col(Col.ITEM).desc(), F.col(Col.EVENT).desc())
    n = F.col(_N)
    h = F.when(n >= 2, F.least(n - 1, F.greatest(F.lit(1), F.round(n * F.lit(float(holdout_ratio))).cast("long"))))
    ranked = (pos.withColumn(_N, F.count(F.lit(1)).over(by_user))
              .withColumn(_RN, F.row_number().over(newest))
              .withColumn("_test", F.col(_RN) <= F.coalesce(h, F.lit(0))))
    train = ranked.where(~F.col("_test")).select(*_EVENT_COLS)
    test_ev = ranked.where(F.col("_test")).select(*_EVENT_COLS)
    return Split("user_chrono", train, _test_items(test_ev, train, weights), run_date)


def split_time(events: DataFrame, weights: dict[str, float], run_date: date, lookback_days: int,
               holdout_days: int) -> Split:
    """Global time cut-off: events of the last ``holdout_days`` days up to D are the test part.

    cut = start of (D - holdout_days + 1) UTC. Train = window events with ts < cut (all types); test =
    positive window events with ts >= cut. The train matrix is built for D - holdout_days (the day before
    the cut), so it sees [D - lookback_days + 1, cut) and decays from the cut. Users whose first positive
    event is after the cut are test users without history (their lists come from ``popular`` only).
    Cost: two filters, no shuffle until the test-item anti join.
    """
    win = window_events(events, run_date, lookback_days)
    cut, _ = window_bounds(run_date, holdout_days)
    cut_us = F.lit(int(cut.timestamp()) * 1_000_000)
    us = F.unix_micros(F.col(Col.TS))
    train = win.where(us < cut_us)
    test_ev = win.where(us >= cut_us)
    return Split("time", train, _test_items(test_ev, train, weights), run_date - timedelta(days=holdout_days))
