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


class MissingUpstream(MissingInput):
    """An upstream table has no partition a stage can use: names the table, its latest partition and the
    command that builds the one needed."""

    def __init__(self, stage: str, run_date: str, table: str, needed: str, latest: str | None, command: str):
        self.stage, self.run_date, self.table, self.needed, self.latest, self.command = (
            stage, run_date, table, needed, latest, command)
        super().__init__(
            f"{stage} for {run_date} needs {table} {needed}, but {table} has "
            f"{'no partition' if latest is None else f'latest partition dt={latest}'}: "
            f"build it with `{command}`")


class EmptySource(MissingInput):
    """A source path exists (or its glob matches) but holds no data file: an empty delivery folder."""

    def __init__(self, table: str, path: str, detail: str = ""):
        self.table, self.path = table, path
        extra = f" ({detail})" if detail else ""
        super().__init__(f"source {table}: {path} holds no data files{extra}; nothing was published")


class SourceUnreadable(RecsysBatchError):
    """A file of a source cannot be read: 0 bytes, truncated, not Parquet at all, corrupt pages, ...

    ``path`` is the bad file when it is known, else the source folder.
    """

    def __init__(self, table: str, path: str, problem: str):
        self.table, self.path, self.problem = table, path, problem.strip().rstrip(".").strip()
        super().__init__(f"source {table}: cannot read {path}: {self.problem}; nothing was published "
                         f"(replace or remove the file and re-run)")


class UpstreamIncomplete(RecsysBatchError):
    """A stage was asked to run before the stages it reads from succeeded for the date."""


class RejectRatioExceeded(RecsysBatchError):
    """Too many rows of a batch broke the contract; nothing was published."""

    def __init__(self, table: str, run_date: str, total: int, rejected: int, by_reason: Mapping[str, int],
                 max_ratio: float, quarantine: str):
        self.table, self.run_date, self.total, self.rejected = table, run_date, total, rejected
        self.by_reason, self.max_ratio, self.quarantine = dict(by_reason), max_ratio, quarantine
        ratio = rejected / total if total else 0.0
        reasons = ", ".join(f"{k}={v:,}" for k, v in sorted(self.by_reason.items(), key=lambda kv: (-kv[1], kv[0])))
        # no square brackets: the CLI prints through rich, which takes "[reason=n]" for a markup tag
        super().__init__(
            f"{table} for {run_date}: {rejected:,} of {total:,} rows rejected ({ratio:.2%}) > "
            f"max_reject_ratio {max_ratio:.2%}; by reason: {reasons}. Nothing was published; the rejected rows "
            f"are in {quarantine} (dt={run_date}) with their reason and source file."
        )


class OlderThanLive(RecsysBatchError):
    """Publishing this date would replace a newer live release (rollback is the way back)."""


class GateRefused(RecsysBatchError):
    """The evaluation gate refused to publish; carries the metric table."""
