"""Errors of the images package, under tryfleet's one root: each subclass also the builtin it
resembles, and BadRequest (a recipe or name that can never work) or InfrastructureError (a build
that failed this time, e.g. on a network error) where the scheduler must tell them apart."""

from __future__ import annotations

from collections.abc import Sequence

from tryfleet.errors import BadRequest, InfrastructureError, TryfleetError

STDERR_TAIL_LINES = 15


class ImageError(TryfleetError):
    """Root of every error raised by images/."""


class RecipeError(ImageError, BadRequest):
    """A recipe file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"recipe {path}: {problem}")
        self.path = path


class UnknownImage(ImageError, BadRequest, LookupError):
    """Neither a recipe nor a build of that name."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        names = ", ".join(sorted(known)) or "(none)"
        super().__init__(f"unknown image {name!r}: no recipe and no build of that name "
                         f"(known recipes: {names})")
        self.name = name
        self.known = tuple(sorted(known))


class ImageNotBuilt(ImageError, FileNotFoundError):
    """A recipe exists but no complete build of it does."""

    def __init__(self, name: str, data_dir: object) -> None:
        # One argument only: OSError with two would format itself as "[Errno ...]".
        super().__init__(f"image {name!r} is not built in {data_dir}: "
                         f"run `tryfleet image build {name}`")
        self.name = name


class BuildError(ImageError, InfrastructureError):
    """One build step failed; the message names the step and ends with the command's stderr."""

    def __init__(self, step: str, problem: str, stderr: str = "") -> None:
        message = f"build step {step!r} failed: {problem}"
        tail = stderr_tail(stderr)
        if tail:
            message += "\n" + tail
        super().__init__(message)
        self.step = step
        self.stderr = stderr


def stderr_tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    """The last non-empty lines of a command's output, indented, for an error message."""
    kept = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(f"  | {line}" for line in kept)
