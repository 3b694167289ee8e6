"""Structured logs: one JSON object a line (or text for people), with the ids of the work a
line belongs to.

    with logs.bind(tenant="acme", suite="nightly", iteration="it-7", attempt=2):
        log.info("attempt started")   # -> {"ts": ..., "level": "info", ..., "tenant": "acme", ...}

The ids live in a context variable: an asyncio task started inside `bind` inherits them (a
copy), and two requests served at once never see each other's. A thread does not inherit
them (Python 3.11): bind again at its start. `extra={...}` on one call adds fields to that
line only (and wins over the bound ones).

Only entry points call `configure`: the CLI (role cli) and the constructors of the fleet's
actors (gateway, scheduler, nodeagent), which are started with a `LogSetup` saying the format
the CLI was asked for. Built on the standard library's logging; no dependency.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import io
import json
import logging
import logging.handlers
import os
import re
import socket
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, Any, TypeVar

ROLES = ("gateway", "scheduler", "nodeagent", "cli")
FORMATS = ("json", "text")
LEVELS = ("debug", "info", "warning", "error")
ENV_FORMAT, ENV_LEVEL = "TRYFLEET_LOG_FORMAT", "TRYFLEET_LOG_LEVEL"
# The ids that explain a line, in the order the text format prints them.
IDS = ("tenant", "key", "suite", "iteration", "attempt", "sandbox", "request_id", "trace_id",
       "host", "route")
FILE_MAX_BYTES = 50 * 1024 * 1024  # a role's file is rotated at this size, FILE_BACKUPS kept
FILE_BACKUPS = 4
# An API key's secret part, wherever it would appear in a line (`tf_<id>_<secret>`).
_KEY_SECRET = re.compile(r"\b(tf_[0-9a-f]{12}_)[A-Za-z0-9_-]{43}")
_SECRET_FIELD = re.compile(r"secret|token|password|authorization|api_key|credential", re.I)
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}

_ids: ContextVar[Mapping[str, Any]] = ContextVar("tryfleet_log_ids",
                                                 default=MappingProxyType({}))
F = TypeVar("F", bound=Callable[..., Any])


def _kept(ids: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ids.items() if v is not None and v != ""}


class bind:  # lower case: used as a function, `with bind(...)`, `@bind(...)`
    """The ids, on every line logged inside (a context manager, or a decorator of a function,
    a coroutine function or a generator function); nested binds add to the outer ones. None
    and "" are left out (they do not hide an outer id)."""

    def __init__(self, **ids: Any) -> None:
        self.ids = _kept(ids)
        self._tokens: list[Any] = []

    def __enter__(self) -> bind:
        self._tokens.append(_ids.set(MappingProxyType({**_ids.get(), **self.ids})))
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        _ids.reset(self._tokens.pop())

    def __call__(self, fn: F) -> F:
        ids = self.ids
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def acall(*args: Any, **kwargs: Any) -> Any:
                with bind(**ids):
                    return await fn(*args, **kwargs)
            return acall  # type: ignore[return-value]
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen(*args: Any, **kwargs: Any) -> Iterator[Any]:
                yield from bound_steps(fn(*args, **kwargs), **ids)
            return gen  # type: ignore[return-value]

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with bind(**ids):
                return fn(*args, **kwargs)
        return call  # type: ignore[return-value]


def bound_steps(items: Iterator[Any], **ids: Any) -> Iterator[Any]:
    """`items`, each step run with the ids bound. (A bind held across a generator's yields
    would leak into whoever iterates it.) Closed early, it closes `items` too, at once."""
    try:
        while True:
            with bind(**ids):
                try:
                    item = next(items)
                except StopIteration:
                    return
            yield item
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            with bind(**ids):
                close()


def add(**ids: Any) -> None:
    """Add ids to those bound now, until the enclosing bind ends: for ids learnt midway
    through a piece of work (the gateway learns a request's tenant and key as it checks it)."""
    _ids.set(MappingProxyType({**_ids.get(), **_kept(ids)}))


def current() -> dict[str, Any]:
    """The ids bound now."""
    return dict(_ids.get())


def ids_of(record: Any) -> dict[str, Any]:
    """A dataclass of ids (wire.Ids) as bind's keywords; unset ones (empty, 0) left out."""
    return {k: v for k, v in dataclasses.asdict(record).items() if v}


def scrub(text: str) -> str:
    """Text with any API key's secret part cut out (its id stays: it says which key)."""
    return _KEY_SECRET.sub(r"\1<redacted>", text) if "tf_" in text else text


@functools.lru_cache(maxsize=1024)
def _secret_field(name: str) -> bool:
    return _SECRET_FIELD.search(name) is not None


def _value(name: str, value: Any) -> Any:
    if _secret_field(name):
        return "<redacted>"
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return scrub(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts (RFC 3339, UTC), level, logger, msg, role, host, pid, the
    bound ids, the line's extra fields (but None ones), and exc ({type, message, stack}) for
    an exception.
    `host` is the fleet host the work is on when one is bound, else this process's."""

    def __init__(self, role: str, host: str | None = None) -> None:
        super().__init__()
        self.role, self.host = role, host or socket.gethostname()

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """The line's fields, worked out once per record and formatter kind (a record goes
        to stderr and to the file); a copy."""
        cached = record.__dict__.get("_tryfleet_fields")
        if cached is None or cached[0] != (self.role, self.host):
            cached = ((self.role, self.host), self._fields(record))
            record.__dict__["_tryfleet_fields"] = cached
        return dict(cached[1])

    def _fields(self, record: logging.LogRecord) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="microseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(), "logger": record.name,
            "msg": scrub(record.getMessage()), "role": self.role, "host": self.host,
            "pid": record.process}
        out.update(_ids.get())
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_") and value is not None \
                    and name not in ("ts", "level", "logger", "msg", "role", "pid"):
                out[name] = value
        for name in list(out)[7:]:
            out[name] = _value(name, out[name])
        if record.exc_info and record.exc_info[1] is not None:
            err = record.exc_info[1]
            out["exc"] = {"type": type(err).__qualname__, "message": scrub(str(err)),
                          "stack": scrub("".join(traceback.format_exception(err)))}
        if record.stack_info:
            out["stack"] = scrub(record.stack_info)
        return out

    def format(self, record: logging.LogRecord) -> str:
        line = record.__dict__.get("_tryfleet_json")
        if line is None or line[0] != (self.role, self.host):
            line = ((self.role, self.host), json.dumps(self.fields(record), default=str))
            record.__dict__["_tryfleet_json"] = line
        return str(line[1])


class TextFormatter(JsonFormatter):
    """For people: `ts LEVEL logger: msg  id=value ...`, then the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        f = self.fields(record)
        exc = f.pop("exc", None)
        head = f"{f.pop('ts')} {f.pop('level').upper()} {f.pop('logger')}: {f.pop('msg')}"
        for name in ("role", "pid"):
            f.pop(name)
        if f.get("host") == self.host:
            f.pop("host")
        rest = " ".join(f"{k}={f[k]}" for k in sorted(f, key=_id_order))
        line = f"{head}  {rest}" if rest else head
        return f"{line}\n{exc['stack'].rstrip()}" if exc else line


def _id_order(name: str) -> tuple[int, str]:
    return (IDS.index(name) if name in IDS else len(IDS), name)


class _PrivateRotatingFile(logging.handlers.RotatingFileHandler):
    """A rotating log file readable by its owner only (0600), like the rest of the data
    directory (private.py)."""

    def _open(self) -> io.TextIOWrapper:
        from tryfleet.private import FILE_MODE

        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        os.fchmod(fd, FILE_MODE)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        """Once the file has reached maxBytes (the stdlib's formats each line twice and
        looks the file up on disk to know it, for each line)."""
        if self.stream is None:
            self.stream = self._open()
        return 0 < self.maxBytes <= self.stream.tell()


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """To whatever sys.stderr is when a line is written (as logging's last resort does), not
    to the one it was when configured (a test's capture, closed since)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass


@dataclasses.dataclass(frozen=True, slots=True)
class LogSetup:
    """How an actor logs, given by whoever starts it: the format of its stderr (which Ray keeps
    in its worker-*.err files) and the level. Its JSON file, <data>/logs/<name>.jsonl, is
    written whatever the format."""

    fmt: str = "json"
    level: str = "info"

    @classmethod
    def from_env(cls) -> LogSetup:
        """What this process was asked for (the CLI's --log-format and --log-level, kept in
        the environment), for the actors it starts; json and info by default."""
        return cls(_choice(os.environ.get(ENV_FORMAT), FORMATS, "json"),
                   _choice(os.environ.get(ENV_LEVEL), LEVELS, "info"))

    def apply(self, role: str, data_dir: str | Path | None, name: str | None = None,
              host: str | None = None) -> None:
        configure(role, self.fmt, self.level, data_dir=data_dir, name=name, host=host)


def _choice(value: str | None, allowed: tuple[str, ...], default: str) -> str:
    value = (value or "").strip().lower()
    return value if value in allowed else default


def configure(role: str, fmt: str | None = None, level: str | int | None = None, *,
              data_dir: str | Path | None = None, name: str | None = None,
              host: str | None = None, stream: IO[str] | None = None) -> None:
    """This process's logging (entry points only): lines to stderr in `fmt` (json or text;
    default $TRYFLEET_LOG_FORMAT, else json), at `level` (default $TRYFLEET_LOG_LEVEL, else
    info), and with a data_dir also as JSON to <data_dir>/logs/<name or role>.jsonl (0600,
    rotated). host: this process's name in the fleet (default: the machine's). Called again,
    it replaces what it set up before, and nothing else."""
    if role not in ROLES:
        raise ValueError(f"log role {role!r}: expected one of {', '.join(ROLES)}")
    fmt = _choice(fmt or os.environ.get(ENV_FORMAT), FORMATS, "json")
    if level is None:
        level = _choice(os.environ.get(ENV_LEVEL), LEVELS, "info")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "tryfleet", False)]:
        root.removeHandler(old)
        old.close()
    out = logging.StreamHandler(stream) if stream is not None else _Stderr()
    out.setFormatter((TextFormatter if fmt == "text" else JsonFormatter)(role, host))
    handlers: list[logging.Handler] = [out]
    if data_dir is not None:
        with contextlib.suppress(OSError):  # a data dir it may not write: stderr only
            handlers.append(_file(Path(data_dir), name or role, role, host))
    for h in handlers:
        h.tryfleet = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level.upper() if isinstance(level, str) else level)


def _file(data_dir: Path, name: str, role: str, host: str | None) -> logging.Handler:
    from tryfleet.private import private_dir

    folder = private_dir(data_dir / "logs")
    handler = _PrivateRotatingFile(folder / f"{name}.jsonl", maxBytes=FILE_MAX_BYTES,
                                   backupCount=FILE_BACKUPS, encoding="utf-8")
    handler.setFormatter(JsonFormatter(role, host))
    return handler


def log_file(data_dir: str | Path, name: str) -> Path:
    """Where configure(data_dir=..., name=name) writes its JSON lines."""
    return Path(data_dir) / "logs" / f"{name}.jsonl"


__all__ = ["FORMATS", "IDS", "LEVELS", "ROLES", "JsonFormatter", "LogSetup", "TextFormatter",
           "add", "bind", "bound_steps", "configure", "current", "ids_of", "log_file", "scrub"]
