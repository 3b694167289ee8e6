"""Text for agents: output kept within a budget (its start and its end, the middle counted),
and a refusal as an MCP tool error that says what was wrong and what to do."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

PROBLEM_PREFIX = "urn:tryfleet:problem:"

# What an agent can do about each kind of refusal (the problem's detail says what was wrong).
WHAT_TO_DO = {
    "not-found": "check the path or id the detail names: a sandbox is gone once destroyed or "
                 "once its timeout_s passed (open another with create_sandbox); iterations and "
                 "suites are your tenant's own",
    "bad-request": "fix the argument the detail names; the same call fails the same way",
    "invalid-request": "fix the argument the detail names; the same call fails the same way",
    "bad-path": "use an absolute, normalised path (no `..`)",
    "too-large": "send or ask for less at once (split the file, or let a command write it)",
    "unauthorized": "the key is unknown, revoked or expired: ask an admin for a new one",
    "forbidden": "this key may not do this: ask an admin for a key with the scope named "
                 "(`tryfleet key create --tenant T --scope SCOPE`)",
    "policy-denied": "ask for less: the detail names your tenant's rule that refuses it",
    "quota-exceeded": "destroy sandboxes you no longer need (destroy_sandbox), or wait for "
                      "running work to end, then try again",
    "cannot-place": "no host of the fleet could ever run this: ask for fewer cpus, less "
                    "mem_mib or another image",
    "no-room": "the fleet is full right now: try again in a while",
    "unavailable": "the fleet is restarting or out of reach: try again in a few seconds",
    "internal": "a fault in tryfleet itself: report the request id to the fleet's operator",
}


def slug_of(problem: Mapping[str, Any]) -> str:
    kind = problem.get("type")
    return kind.removeprefix(PROBLEM_PREFIX) if isinstance(kind, str) else "error"


def refusal_text(problem: Mapping[str, Any]) -> str:
    """One tool error: the detail, its kind and status, what to do, the request id, and the
    problem document itself (for a program to read)."""
    slug = slug_of(problem)
    status = problem.get("status")
    detail = str(problem.get("detail") or problem.get("title") or "refused")
    text = f"{detail} [{slug}" + (f", HTTP {status}]" if status else "]")
    if slug in WHAT_TO_DO:
        text += f". What to do: {WHAT_TO_DO[slug]}."
    if problem.get("request_id"):
        text += f" (request {problem['request_id']})"
    return text + "\nproblem: " + json.dumps(dict(problem), default=str, sort_keys=True)


class Capture:
    """What is kept of one output stream within `limit` characters: its first quarter and its
    last three quarters; the characters between are counted, not kept."""

    def __init__(self, limit: int) -> None:
        self.head_limit = limit // 4
        self.tail_limit = limit - self.head_limit
        self.head, self.tail, self.total = "", "", 0

    def add(self, text: str) -> None:
        self.total += len(text)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += text[:room]
            text = text[room:]
        if text and self.tail_limit > 0:
            self.tail = (self.tail + text)[-self.tail_limit:]

    @property
    def cut(self) -> int:
        return self.total - len(self.head) - len(self.tail)

    def text(self) -> str:
        if not self.cut:
            return self.head + self.tail
        return f"{self.head}\n[... {self.cut} characters left out ...]\n{self.tail}"


def tail(text: str, limit: int) -> tuple[str, int]:
    """The last `limit` characters of text, and how many were left out before them."""
    if len(text) <= limit:
        return text, 0
    return (text[len(text) - limit:] if limit else ""), len(text) - limit


def pieces(text: str, size: int) -> Iterator[str]:
    """text in pieces of at most `size` characters."""
    for start in range(0, len(text), size):
        yield text[start:start + size]


__all__ = ["WHAT_TO_DO", "Capture", "pieces", "refusal_text", "slug_of", "tail"]
