"""Errors a job fails with. Each message names the source/table, the column or key, and the numbers.

The CLI prints a :class:`RecsysBatchError` without a traceback and exits non-zero; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class RecsysBatchError(Exception):
    """Base class of every error a user can act on."""


class ConfigError(RecsysBatchError):
    """Unknown key, bad value or unreadable YAML; the message carries the key path."""


class EnvironmentProblem(RecsysBatchError):
    """Java missing or too old, Delta jars not fetched, ..."""


class SchemaError(RecsysBatchError):
    """A source or table lacks required columns or has the wrong types."""

    def __init__(self, table: str, missing: Sequence[str], present: Sequence[str], where: str = ""):
        self.table, self.missing, self.present = table, list(missing), list(present)
        loc = f" ({where})" if where else ""
        super().__init__(
            f"{table}{loc} is missing required column(s): {', '.join(self.missing)}; "
            f"present: {', '.join(self.present) or '(none)'}"
        )


class MissingInput(RecsysBatchError):
    """A required input (source path or upstream table partition) does not exist."""


class UpstreamIncomplete(RecsysBatchError):
    """A stage was asked to run before the stages it reads from succeeded for the date."""


class RejectRatioExceeded(RecsysBatchError):
    """Too many rows of a batch broke the contract; nothing was published."""

    def __init__(self, table: str, run_date: str, total: int, rejected: int, by_reason: Mapping[str, int],
                 max_ratio: float, quarantine: str):
        self.table, self.run_date, self.total, self.rejected = table, run_date, total, rejected
        self.by_reason, self.max_ratio, self.quarantine = dict(by_reason), max_ratio, quarantine
        ratio = rejected / total if total else 0.0
        reasons = ", ".join(f"{k}={v:,}" for k, v in sorted(self.by_reason.items(), key=lambda kv: -kv[1]))
        super().__init__(
            f"{table} for {run_date}: {rejected:,} of {total:,} rows rejected ({ratio:.2%}) > "
            f"max_reject_ratio {max_ratio:.2%} [{reasons}]. Nothing was published; the rejected rows "
            f"are in {quarantine} (dt={run_date}) with their reason and source file."
        )


class OlderThanLive(RecsysBatchError):
    """Publishing this date would replace a newer live release (rollback is the way back)."""


class GateRefused(RecsysBatchError):
    """The evaluation gate refused to publish; carries the metric table."""
