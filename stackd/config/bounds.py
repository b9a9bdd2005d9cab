"""A config file within bounds, before it is built into Python objects.

A run config is a few kilobytes. What is not (a file the size of a disk image, 20,000 nested
``[``, a billion-laughs of anchors) would take the loader's recursion, memory or minutes, so
it is refused with a located error instead:

- the file is read up to :data:`MAX_CONFIG_BYTES` (so ``/dev/zero`` is refused, not read);
- it must be UTF-8 (the error names the line and column of the first bad byte);
- no line may be longer than :data:`MAX_LINE_CHARS`;
- one pass over ruamel.yaml's parse events (iterative, so depth cannot exhaust the stack)
  counts nesting depth and the nodes the document holds once every alias is expanded, as
  every later walk (env substitution, structuring) expands them.
"""

from __future__ import annotations

import io
from pathlib import Path

import attrs
from ruamel.yaml import YAML
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    Event,
    ScalarEvent,
)

from stackd.config.problems import ConfigError, Problem

__all__ = ["MAX_CONFIG_BYTES", "MAX_DEPTH", "MAX_LINE_CHARS", "MAX_NODES", "check_shape", "read_text"]

# The YAML loader reads about a megabyte a second and takes ~70 µs per value, and a long
# comment line costs it quadratic time (4 MiB of one comment: five minutes): these bounds keep
# the worst file a few seconds, far above real configs (2,000 models: 140 KB, 24,000 nodes).
MAX_CONFIG_BYTES = 1024 * 1024
"""The size of the file."""
MAX_LINE_CHARS = 64 * 1024
"""The length of one line."""
MAX_DEPTH = 64
"""Collections inside collections; a run config needs about 8."""
MAX_NODES = 50_000
"""Keys, values and collections after alias expansion; about 12 per model entry."""


def read_text(path: Path) -> str:
    """The text of the config file at ``path``; :class:`ConfigError` when it cannot be one."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([Problem("$", f"cannot read config file {path}: {exc.strerror or exc}")]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([Problem("$", f"the config file is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB; "
                                   "is this the right file?", str(path))])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError([Problem("$", f"the config file is not UTF-8 text: byte 0x{raw[exc.start]:02x} cannot "
                                   "be decoded; save the file as UTF-8", f"{path}:{line}:{column}")]) from None
    return text


def check_lines(text: str, filename: str) -> None:
    """Refuse a line longer than :data:`MAX_LINE_CHARS`."""
    if len(text) <= MAX_LINE_CHARS:
        return
    for number, line in enumerate(text.split("\n"), 1):
        if len(line) > MAX_LINE_CHARS:
            raise ConfigError([Problem("$", f"line {number} of the config is longer than {MAX_LINE_CHARS} "
                                       "characters; break it up (YAML folds long strings over lines with > or |)",
                                       f"{filename}:{number}:1")])


def _where(event: Event, filename: str) -> str:
    mark = event.start_mark
    return f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark is not None else filename


@attrs.define
class _Open:
    """A collection whose end event has not come yet."""

    anchor: str | None
    before: int  # nodes counted before it
    tallest: int = 0  # the height of its tallest child so far


def check_shape(text: str, filename: str) -> None:
    """Refuse a document nested deeper than :data:`MAX_DEPTH` or larger than :data:`MAX_NODES`
    once its aliases are expanded. YAML syntax errors propagate as ruamel raises them."""
    check_lines(text, filename)
    nodes = 0
    depth = 0
    # per anchor: (nodes, height) of the subtree it names, as an alias expands it
    anchors: dict[str, tuple[int, int]] = {}
    frames: list[_Open] = []

    def child(height: int) -> None:
        if frames:
            frames[-1].tallest = max(frames[-1].tallest, height)

    for event in YAML(typ="rt").parse(io.StringIO(text)):
        if isinstance(event, CollectionStartEvent):
            nodes += 1
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError([Problem("$", f"the config is nested more than {MAX_DEPTH} levels deep",
                                           _where(event, filename))])
            frames.append(_Open(event.anchor, nodes - 1))
        elif isinstance(event, CollectionEndEvent):
            done = frames.pop()
            depth -= 1
            height = done.tallest + 1
            if done.anchor:
                anchors[done.anchor] = (nodes - done.before, height)
            child(height)
        elif isinstance(event, ScalarEvent):
            nodes += 1
            if event.anchor:
                anchors[event.anchor] = (1, 0)
        elif isinstance(event, AliasEvent):
            size, height = anchors.get(event.anchor, (1, 0))
            nodes += size
            if depth + height > MAX_DEPTH:
                raise ConfigError([Problem("$", f"the config is nested more than {MAX_DEPTH} levels deep once "
                                           f"alias *{event.anchor} is expanded", _where(event, filename))])
            child(height)
        else:
            continue
        if nodes > MAX_NODES:
            why = (" once its aliases are expanded (an alias repeats all of what its anchor names); use fewer "
                   "aliases" if anchors else "; is this the right file?")
            raise ConfigError([Problem("$", f"the config holds more than {MAX_NODES} keys and values{why}",
                                       _where(event, filename))])
