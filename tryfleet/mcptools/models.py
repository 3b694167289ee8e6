"""What the MCP tools take and give, as pydantic models: their JSON schemas are what an agent
reads (each field with its unit, default and bounds), and their bounds are the /v1 API's, so a
value the schema takes is one the API takes (the tenant's policy aside, which only the fleet
knows)."""

from __future__ import annotations

import base64
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # suite, iteration id, limit and image names
MAX_WRITE_BYTES = 8 * 1024 * 1024  # the most one write_file call writes
MAX_READ_BYTES = 8 * 1024 * 1024  # the most one read_file call returns
MAX_EXEC_S = 7 * 86400.0
MAX_ARG_CHARS = 128 * 1024
MAX_BATCH = 1000  # iterations in one submit_batch call
State = Literal["QUEUED", "PLACED", "RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED",
                "INFRA_ERROR"]
ENDED = ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED", "INFRA_ERROR")

# ---- argument types ---------------------------------------------------------------------------
Image = Annotated[str, Field(
    min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    description="the image the VM boots; `base` is Debian 12 with bash, python3, pytest, git "
                "and sqlite3")]
SandboxId = Annotated[str, Field(min_length=1, max_length=64,
                                 description="the sandbox's id, as create_sandbox returned it")]
GuestPath = Annotated[str, Field(
    min_length=1, max_length=4096, pattern=r"^/",
    description="an absolute path in the sandbox, e.g. /root/main.py (`..` is refused)")]
Arg = Annotated[str, Field(max_length=MAX_ARG_CHARS)]
EnvName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^=\x00]+$")]
ENV_HELP = "environment variables added for the command, NAME -> value"
Env = Annotated[dict[EnvName, Arg], Field(max_length=256, description=ENV_HELP)]
MaybeEnv = Annotated[dict[EnvName, Arg] | None, Field(max_length=256, description=ENV_HELP)]
SECRETS_HELP = ("names of your tenant's secrets to set as environment variables of the same "
                "names (where its policy allows); their values are masked in output")
SecretName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
SecretNames = Annotated[list[SecretName], Field(max_length=64, description=SECRETS_HELP)]
MaybeSecrets = Annotated[list[SecretName] | None, Field(max_length=64, description=SECRETS_HELP)]
Metadata = Annotated[dict[Annotated[str, Field(min_length=1, max_length=64)],
                          Annotated[str, Field(max_length=1024)]] | None,
                     Field(max_length=64, description="your labels, key -> value (kept with "
                                                      "the sandbox)")]
Command = Annotated[str | list[Arg], Field(
    description="a shell command line as one string (run by `bash -c`, so pipes, `&&` and "
                "redirections work), or an argv list run directly without a shell, e.g. "
                "[\"python3\", \"-c\", \"print(6*7)\"]")]
SuiteName = Annotated[str, Field(
    pattern=NAME, description="the suite (a named batch of iterations) of your tenant; letters, "
                              "digits, '.', '_', '-', up to 128")]
Cursor = Annotated[str | None, Field(max_length=20, description="next_cursor of the previous "
                                                                "page; omit for the first")]


def argv_of(command: str | list[str]) -> list[str]:
    """A command as an argv: a string is a shell command line (bash -c)."""
    return ["bash", "-c", command] if isinstance(command, str) else list(command)


# Run as another user of the sandbox: its uid, its group and supplementary groups, its HOME,
# USER, SHELL and PATH (util-linux's setpriv, in every Debian image), the caller's variables
# added after (env); in its home unless a cwd was given. The /v1 exec names no user (commands
# run as root), so the user is taken on here, in the command.
_AS_USER = ('u=$1; shift; g=$(id -g -- "$u") || exit 126; '
            'exec setpriv --reuid="$u" --regid="$g" --init-groups --reset-env -- "$@"')
_TO_HOME = 'cd "$HOME" 2>/dev/null; exec "$@"'


def as_user(argv: list[str], env: dict[str, str], user: str | None, cwd: str | None
            ) -> tuple[list[str], dict[str, str]]:
    """The argv and env that run argv as `user` (root, or no user: as they are)."""
    if user is None or user == "root":
        return argv, env
    inner = ["env", *(f"{k}={v}" for k, v in sorted(env.items())), *argv]
    if cwd is None:
        inner = ["sh", "-c", _TO_HOME, "sh", *inner]
    return ["sh", "-c", _AS_USER, "sh", user, *inner], {}



class IterationSpec(BaseModel):
    """One iteration: a fresh VM from `image`, `files` written, `command` run, the VM thrown
    away. Its result is the command's exit code and output."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(default=None, pattern=NAME, description="your id for it (unique in your "
                                                           "tenant); made up when omitted")
    image: Image = "base"
    command: Command
    files: dict[Annotated[str, Field(max_length=4096, pattern=r"^/")],
                Annotated[str, Field(max_length=MAX_WRITE_BYTES)]] = Field(
        default_factory=dict, max_length=256,
        description="files written before the command runs: absolute path -> text content")
    files_b64: dict[Annotated[str, Field(max_length=4096, pattern=r"^/")],
                    Annotated[str, Field(max_length=MAX_WRITE_BYTES * 4 // 3 + 4)]] = Field(
        default_factory=dict, max_length=256,
        description="binary files: absolute path -> content as base64")
    env: Env = Field(default_factory=dict)
    secrets: SecretNames = Field(default_factory=list)
    cwd: str | None = Field(default=None, max_length=4096, pattern=r"^/",
                            description="working directory (default /root)")
    timeout_s: float = Field(default=600.0, gt=0, le=MAX_EXEC_S,
                             description="seconds the command may run before it is stopped "
                                         "(state TIMED_OUT)")
    cpus: int = Field(default=1, ge=1, le=1024, description="vCPUs of its VM")
    mem_mib: int = Field(default=512, ge=128, le=1 << 24, description="memory of its VM, MiB")
    limits: list[Annotated[str, Field(pattern=NAME)]] = Field(
        default_factory=list, max_length=16,
        description="names of shared-resource limits it holds while it runs (e.g. \"ci-db\"); "
                    "their sizes are set by the fleet's admins")
    retries: int = Field(default=0, ge=0, le=100, description="re-runs when the command fails "
                                                      "(infrastructure errors are retried anyway)")

    def to_api(self) -> dict[str, Any]:
        """As POST /v1/batches takes it; an id made up here when none was given, so a call that
        is sent again records nothing twice."""
        files: dict[str, Any] = dict(self.files)
        files.update({p: {"b64": v} for p, v in self.files_b64.items()})
        body: dict[str, Any] = {
            "id": self.id or uuid.uuid4().hex[:16], "image": self.image,
            "command": argv_of(self.command), "files": files, "env": dict(self.env),
            "timeout_s": float(self.timeout_s), "cpus": self.cpus, "mem_mib": self.mem_mib,
            "limits": list(self.limits), "retries": self.retries}
        if self.cwd is not None:
            body["cwd"] = self.cwd
        if self.secrets:
            body["secrets"] = list(self.secrets)
        return body


# ---- results -----------------------------------------------------------------------------------
class SandboxInfo(BaseModel):
    id: str = Field(description="pass it to the other sandbox tools")
    image: str
    cpus: int
    mem_mib: int
    state: Literal["open", "closed"]
    created_at: float = Field(description="seconds since the epoch")
    expires_at: float = Field(description="seconds since the epoch: destroyed then, with "
                                          "everything in it, unless destroyed before")
    metadata: dict[str, str]
    request_id: str = Field(description="the request that opened it (for an operator)")


class CommandResult(BaseModel):
    exit_code: int | None = Field(description="the command's exit status; null when a signal "
                                              "ended it or its timeout passed")
    signal: int | None = Field(description="the signal that ended it, if one did")
    timed_out: bool = Field(description="stopped because timeout_s passed")
    duration_s: float
    stdout: str = Field(description="standard output as UTF-8 text (invalid bytes as U+FFFD)")
    stderr: str
    stdout_cut_chars: int = Field(description="characters of stdout left out of this result "
                                              "(0: it is whole)")
    stderr_cut_chars: int
    note: str | None = Field(default=None, description="why output is missing, when some is")
    request_id: str | None


class FileWritten(BaseModel):
    path: str
    size_bytes: int
    sha256: str = Field(description="of the bytes written, hex")
    request_id: str | None


class FileContent(BaseModel):
    path: str
    encoding: Literal["text", "base64"]
    content: str = Field(description="UTF-8 text (invalid bytes as U+FFFD), or base64")
    bytes_read: int
    truncated: bool = Field(description="the file is longer than max_bytes: only its first "
                                        "max_bytes are here")
    note: str | None = None
    request_id: str | None


class FileEntry(BaseModel):
    name: str
    path: str
    type: Literal["file", "dir", "symlink", "other"]
    size_bytes: int
    mode: str = Field(description="permission bits, octal")
    mtime: float = Field(description="seconds since the epoch, by the sandbox's clock")
    target: str | None = Field(default=None, description="where a symlink points")


class DirListing(BaseModel):
    path: str
    entries: list[FileEntry]
    truncated: bool = Field(description="there were more entries than one listing holds")
    request_id: str | None


class Destroyed(BaseModel):
    sandbox_id: str
    state: Literal["closed"] = "closed"
    request_id: str | None


class BatchSubmitted(BaseModel):
    suite: str
    ids: list[str] = Field(description="the iterations' ids, in the order given")
    request_id: str | None


class BatchStatus(BaseModel):
    suite: str
    counts: dict[str, int] = Field(description="iterations by state: QUEUED, PLACED, RUNNING "
                                               "(in flight); SUCCEEDED, FAILED, TIMED_OUT, "
                                               "CANCELLED, INFRA_ERROR (ended)")
    total: int
    ended: int
    done: bool = Field(description="every iteration has ended")
    request_id: str | None


class IterationResult(BaseModel):
    id: str
    state: State
    exit_code: int | None
    duration_s: float | None
    attempts: int = Field(description="attempts made (retries included)")
    error: str | None = Field(description="why it did not run to its end, when it did not")
    stdout: str | None = Field(default=None, description="the last output_chars characters of its "
                                                 "stdout, once it ended")
    stderr: str | None = None
    stdout_cut_chars: int = 0
    stderr_cut_chars: int = 0


class BatchResults(BaseModel):
    suite: str
    items: list[IterationResult] = Field(description="in submission order")
    next_cursor: str | None = Field(description="pass it as cursor for the next page; null: "
                                                "this is the last")
    request_id: str | None


def b64decode(text: str, what: str) -> bytes:
    """ValueError naming `what` when text is not base64."""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ValueError(f"{what} is not valid base64") from None


__all__ = ["ENDED", "MAX_BATCH", "MAX_EXEC_S", "MAX_READ_BYTES", "MAX_WRITE_BYTES", "NAME",
           "BatchResults", "BatchStatus", "BatchSubmitted", "Command", "CommandResult",
           "Cursor", "Destroyed", "DirListing", "Env", "FileContent", "FileEntry",
           "FileWritten", "GuestPath", "Image", "IterationResult", "IterationSpec", "MaybeEnv",
           "Metadata", "SandboxId", "SandboxInfo", "State", "SuiteName", "argv_of", "as_user",
           "b64decode"]
