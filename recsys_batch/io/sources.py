"""Which files a source path names: Hadoop globs and Spark's hidden-file rule, shared by the JVM-free
input check (:mod:`recsys_batch.checks`, pyarrow) and ingest (:mod:`recsys_batch.io.tables`, Hadoop).

A source path (after ``{date}`` / ``{raw_root}`` are filled in) names a folder, a file, or a Hadoop
glob: ``*`` and ``?`` within one path component, ``[abc]`` / ``[^abc]`` classes and ``{a,b}``
alternatives (``events/{web,app}/dt=2026-11-20``). A folder is read recursively. Names Spark skips
(``_SUCCESS``, ``_temporary/``, ``.part.crc``, ``*._COPYING_``) are not data files here either.
Never imports pyspark.
"""

from __future__ import annotations

import fnmatch
import re

GLOB_CHARS = "*?[{"
#: text (line-based) formats; every other source format is columnar
TEXT_FORMATS = ("csv", "json")


def is_hidden(name: str) -> bool:
    """Spark's rule (``InMemoryFileIndex.shouldFilterOutPathName``), with the Parquet summary files
    (``_metadata``, ``_common_metadata``) counted as hidden too: they describe data, they are not data."""
    return ((name.startswith("_") and "=" not in name) or name.startswith(".")
            or name.endswith("._COPYING_"))


def hidden_below(relative: str) -> bool:
    """True if any component of a ``/``-separated path relative to a listed folder is hidden."""
    return any(is_hidden(part) for part in relative.split("/") if part)


def has_glob(path: str) -> bool:
    return any(c in path for c in GLOB_CHARS)


def expand_braces(pattern: str) -> list[str]:
    """``a/{b,c{d,e}}/f`` -> ``[a/b/f, a/cd/f, a/ce/f]`` (Hadoop's ``{...}`` alternatives, nestable).

    An unbalanced ``{`` is kept literally (Hadoop rejects it; the path then matches nothing).
    """
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth, parts, last = 0, [], start + 1
    for i in range(start, len(pattern)):
        ch = pattern[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                parts.append(pattern[last:i])
                head, tail = pattern[:start], pattern[i + 1:]
                return [x for alt in parts for x in expand_braces(head + alt + tail)]
        elif ch == "," and depth == 1:
            parts.append(pattern[last:i])
            last = i + 1
    return [pattern]


def match_component(name: str, pattern: str) -> bool:
    """One path component against a brace-free glob component (``[^x]`` is Hadoop's negation)."""
    return fnmatch.fnmatchcase(name, re.sub(r"\[\^", "[!", pattern))
