"""Kill switches on disk (the ledger's `switches` table): they outlive the process that flipped
them, keep their history when lifted, and at most one is in force per target."""

import sqlite3

import pytest

from tryfleet.errors import NotFound
from tryfleet.scheduler.ledger import Ledger
from tryfleet.scheduler.switch_book import SwitchBook
from tryfleet.scheduler.switches import Level, Strength

BY = "key:adm cli:ana@box"


def test_a_flipped_switch_is_there_after_the_ledger_is_opened_again(tmp_path):
    book = SwitchBook(tmp_path / "ledger.db")
    flipped, new = book.flip(Level.TENANT, "acme", Strength.FREEZE, "incident 42", BY, now=10.0)
    book.close()
    (again,) = SwitchBook(tmp_path / "ledger.db").active()
    assert new and again == flipped
    assert (again.level, again.target, again.reason, again.flipped_by, again.flipped_at) == (
        Level.TENANT, "acme", "incident 42", BY, 10.0)


def test_the_ledger_itself_makes_the_switches_table(tmp_path):
    Ledger(tmp_path / "ledger.db").close()
    db = sqlite3.connect(tmp_path / "ledger.db")
    assert db.execute("SELECT COUNT(*) FROM switches").fetchone() == (0,)


def test_a_lifted_switch_is_no_longer_in_force_but_stays_in_the_history(tmp_path):
    book = SwitchBook(tmp_path / "ledger.db")
    book.flip(Level.TENANT, "acme", Strength.FREEZE, "why", BY, now=10.0)
    lifted = book.lift(Level.TENANT, "acme", "key:adm cli:bo@box", "fixed", now=20.0)
    assert book.active() == []
    (kept,) = SwitchBook(tmp_path / "ledger.db").history()
    assert kept == lifted
    assert (kept.lifted_by, kept.lifted_at, kept.lift_reason) == ("key:adm cli:bo@box", 20.0,
                                                                  "fixed")


def test_flipping_the_same_switch_again_changes_nothing(tmp_path):
    book = SwitchBook(tmp_path / "ledger.db")
    first, _ = book.flip(Level.HOST, "h1", Strength.FREEZE, "drain", BY)
    again, new = book.flip(Level.HOST, "h1", Strength.FREEZE, "drain again", "key:other")
    assert (again, new) == (first, False) and len(book.history()) == 1


def test_a_kill_replaces_the_freeze_in_force_and_the_history_says_so(tmp_path):
    book = SwitchBook(tmp_path / "ledger.db")
    book.flip(Level.TENANT, "acme", Strength.FREEZE, "look", BY)
    kill, new = book.flip(Level.TENANT, "acme", Strength.KILL, "stop it", BY)
    assert new and book.active() == [kill]
    assert book.history()[1].lift_reason == "replaced by a kill"


def test_the_database_refuses_two_switches_in_force_on_one_target(tmp_path):
    SwitchBook(tmp_path / "ledger.db").flip(Level.TENANT, "acme", Strength.FREEZE, "", BY)
    db = sqlite3.connect(tmp_path / "ledger.db")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO switches (level, target, strength, reason, flipped_by, "
                   "flipped_at) VALUES ('tenant', 'acme', 'kill', '', 'x', 1)")


def test_lifting_where_nothing_is_in_force_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="nothing to lift"):
        SwitchBook(tmp_path / "ledger.db").lift(Level.TENANT, "acme", BY)
