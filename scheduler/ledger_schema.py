"""The ledger's tables, and how a database made by an older tryfleet is brought up to them.

Iteration ids and suite names are per tenant. An iteration's row is keyed by `key`, which is
`tenant/id` (records.qualified): unique across tenants, what the scheduler's core, its writes and
the hosts (StartRequest.id) use, while `id` stays the tenant's own id that the API shows.
Attempts point at their iteration by that key; suites are keyed by (tenant, name).
"""

from __future__ import annotations

import sqlite3

from .records import TERMINAL

ITERATIONS = """
CREATE TABLE IF NOT EXISTS {name} (
    key TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    suite TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    priority INTEGER NOT NULL,
    spec BLOB NOT NULL,
    limits TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    runs_left INTEGER NOT NULL,
    host TEXT,
    submitted_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    duration_s REAL,
    exit_code INTEGER,
    signal INTEGER,
    stdout BLOB,
    stderr BLOB,
    stdout_truncated INTEGER NOT NULL DEFAULT 0,
    stderr_truncated INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result_attempt INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    end_seq INTEGER,
    infra_tries INTEGER NOT NULL DEFAULT 0,
    request_id TEXT NOT NULL DEFAULT '',
    key_id TEXT NOT NULL DEFAULT ''
)"""

SUITES = """
CREATE TABLE IF NOT EXISTS {name} (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    max_iterations INTEGER,
    max_wall_s REAL,
    PRIMARY KEY (tenant, name)
)"""

# Kill switches (switches.py): one row per flip, never deleted; lifting one fills its lifted_*
# columns, so the history stays. At most one switch is in force per target.
SWITCHES = """
CREATE TABLE IF NOT EXISTS switches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    level TEXT NOT NULL,
    target TEXT NOT NULL,
    strength TEXT NOT NULL,
    reason TEXT NOT NULL,
    flipped_by TEXT NOT NULL,
    flipped_at REAL NOT NULL,
    lifted_by TEXT,
    lifted_at REAL,
    lift_reason TEXT
)"""
SWITCHES_IN_FORCE = ("CREATE UNIQUE INDEX IF NOT EXISTS switches_in_force ON "
                     "switches(level, target) WHERE lifted_at IS NULL")

TABLES = [
    SWITCHES,
    ITERATIONS.format(name="iterations"),
    """CREATE TABLE IF NOT EXISTS attempts (
    iteration_key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    host TEXT NOT NULL,
    placed_at REAL NOT NULL,
    ended_at REAL,
    outcome TEXT,
    error TEXT,
    PRIMARY KEY (iteration_key, attempt)
)""",
    SUITES.format(name="suites"),
    # Sizes of the fleet-wide shared-resource limits, set by admins (kept across restarts).
    """CREATE TABLE IF NOT EXISTS limits (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    set_at REAL NOT NULL,
    set_by TEXT NOT NULL DEFAULT ''
)""",
]

# Made once the tables have their current shape (an old database is migrated first).
INDEXES = [
    SWITCHES_IN_FORCE,
    "CREATE INDEX IF NOT EXISTS iterations_state ON iterations(state, priority, seq)",
    "CREATE INDEX IF NOT EXISTS iterations_id ON iterations(id)",
    "CREATE INDEX IF NOT EXISTS iterations_tenant_seq ON iterations(tenant, seq)",
    "CREATE INDEX IF NOT EXISTS iterations_tenant_suite_seq ON iterations(tenant, suite, seq)",
    "CREATE INDEX IF NOT EXISTS iterations_end_seq ON iterations(end_seq)",
    # the control room's chart of endings per minute over the last hour (covering: read from
    # the index alone, for every tenant or one)
    "CREATE INDEX IF NOT EXISTS iterations_ended_at ON iterations(ended_at, state, tenant)",
    "CREATE INDEX IF NOT EXISTS iterations_tenant_end_seq ON iterations(tenant, end_seq)",
    "CREATE INDEX IF NOT EXISTS iterations_tenant_suite_end_seq ON iterations(tenant, suite, "
    "end_seq)",
]

# The columns of the iterations table before tenant keys (after the end_seq and infra_tries
# migrations): copied as they are into the table keyed by tenant.
_OLD_COLUMNS = ("id, seq, tenant, suite, trace_id, priority, spec, limits, state, attempt, "
                "max_attempts, runs_left, host, submitted_at, started_at, ended_at, duration_s, "
                "exit_code, signal, stdout, stderr, stdout_truncated, stderr_truncated, error, "
                "result_attempt, cancel_requested, end_seq, infra_tries")


def columns(db: sqlite3.Connection, table: str) -> dict[str, int]:
    """A table's columns and their place in its primary key (0: not in it)."""
    return {r[1]: r[5] for r in db.execute(f"PRAGMA table_info({table})")}


def create(db: sqlite3.Connection) -> None:
    """The tables, an old database migrated, then the indexes; in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in TABLES:
            db.execute(statement)
        migrate(db)
        for statement in INDEXES:
            db.execute(statement)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def migrate(db: sqlite3.Connection) -> None:
    """Bring a database made before a column or a key was added up to this schema."""
    cols = columns(db, "iterations")
    if "infra_tries" not in cols:
        db.execute("ALTER TABLE iterations ADD COLUMN infra_tries INTEGER NOT NULL DEFAULT 0")
    if "end_seq" not in cols:
        _add_end_seq(db)
    if "key" not in cols:
        _key_by_tenant(db)
    if columns(db, "suites").get("tenant") == 0:
        _suites_by_tenant(db)


def _add_end_seq(db: sqlite3.Connection) -> None:
    """end_seq for the iterations that had already ended, in the order they ended."""
    db.execute("ALTER TABLE iterations ADD COLUMN end_seq INTEGER")
    marks = ", ".join("?" for _ in TERMINAL)
    ended = db.execute(f"SELECT id FROM iterations WHERE state IN ({marks}) "
                       "ORDER BY ended_at, seq", TERMINAL).fetchall()
    db.executemany("UPDATE iterations SET end_seq = ? WHERE id = ?",
                   ((n, r[0]) for n, r in enumerate(ended, 1)))


def _key_by_tenant(db: sqlite3.Connection) -> None:
    """Ids were unique across the whole ledger: each row is now keyed by tenant/id, and its
    attempts follow it. Every row stays its tenant's (the `tenant` column)."""
    db.execute(ITERATIONS.format(name="iterations_keyed"))
    db.execute(f"INSERT INTO iterations_keyed (key, {_OLD_COLUMNS}) "
               f"SELECT tenant || '/' || id, {_OLD_COLUMNS} FROM iterations")
    db.execute("DROP TABLE iterations")
    db.execute("ALTER TABLE iterations_keyed RENAME TO iterations")
    if "iteration_id" in columns(db, "attempts"):
        db.execute("ALTER TABLE attempts RENAME COLUMN iteration_id TO iteration_key")
        db.execute("UPDATE attempts SET iteration_key = COALESCE((SELECT i.key FROM "
                   "iterations i WHERE i.id = attempts.iteration_key), iteration_key)")


def _suites_by_tenant(db: sqlite3.Connection) -> None:
    """A suite name was one row whatever tenant used it: each tenant that has iterations in it
    now has its own suite of that name (the budget stays with the tenant that made it)."""
    db.execute(SUITES.format(name="suites_keyed"))
    db.execute("INSERT INTO suites_keyed SELECT tenant, name, created_at, max_iterations, "
               "max_wall_s FROM suites")
    db.execute("INSERT OR IGNORE INTO suites_keyed (tenant, name, created_at) SELECT tenant, "
               "suite, MIN(submitted_at) FROM iterations GROUP BY tenant, suite")
    db.execute("DROP TABLE suites")
    db.execute("ALTER TABLE suites_keyed RENAME TO suites")


__all__ = ["INDEXES", "SWITCHES", "SWITCHES_IN_FORCE", "TABLES", "columns", "create", "migrate"]
