"""CPU-time and memory probes shared by the training benchmarks (benchmarks/train.py, benchmarks/ranking.py)."""

from __future__ import annotations

from pathlib import Path


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the DataLoader workers)."""
    import resource

    me, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def self_cpu_seconds() -> float:
    """CPU seconds of this process alone (the trainer, without its DataLoader workers)."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def status_mb(key: str) -> float:
    """A /proc/self/status memory figure (VmRSS now, VmHWM peak) in MiB (Linux)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class MeasuredStreamMixin:
    """Mixed in before a sample stream: notes the reading process's RSS when it starts and its peak RSS when it
    ends, in the file ``report`` ("<start MiB> <peak MiB>")."""

    report: str = ""

    def __iter__(self):  # noqa: ANN204
        start = status_mb("VmRSS")
        yield from super().__iter__()
        Path(self.report).write_text(f"{start} {status_mb('VmHWM')}")
