"""verify names what was done to the trail: each record edited, replaced, removed, moved or
repeated; records cut off after a signed checkpoint; a chain rebuilt with recomputed hashes;
a checkpoint with a bad signature. Tampering as an attacker would: the triggers dropped first,
with the sqlite3 module or the sqlite3 shell."""

import base64
import json
import shutil
import sqlite3
import subprocess

import pytest

from tryfleet.audit import Audit, AuditPaths, verifier, verify
from tryfleet.audit.checkpoints import Checkpoint, load_or_make_key
from tryfleet.audit.record import GENESIS, chain_hash, content
from tryfleet.cli import main as cli

N = 12  # records; checkpoints at 4, 8 and 12


@pytest.fixture
def trail(tmp_path):
    audit = Audit(tmp_path, checkpoint_every=4, checkpoint_s=3600)
    for i in range(N):
        audit.record("exec.start", tenant="acme", actor="key:k1", request_id=f"req_{i}",
                     details={"argv": ["echo", str(i)]})
    audit.close()
    return tmp_path


def tamper(data_dir, *statements):
    db = sqlite3.connect(AuditPaths.of(data_dir).db, isolation_level=None)
    db.execute("DROP TRIGGER records_no_update")
    db.execute("DROP TRIGGER records_no_delete")
    db.execute("DROP TRIGGER records_at_head")
    for sql in statements:
        db.execute(sql)
    db.close()


def problems(data_dir):
    return [(p.kind, p.seq) for p in verify(data_dir).problems]


def message(data_dir):
    (p,) = verify(data_dir).problems
    return p.message


def rehash_from(data_dir, first):
    """Recompute every hash from seq `first` on, as an attacker hiding an edit would."""
    db = sqlite3.connect(AuditPaths.of(data_dir).db, isolation_level=None)
    rows = db.execute("SELECT * FROM records ORDER BY seq").fetchall()
    prev = GENESIS
    for r in rows:
        if r[0] >= first:
            h = chain_hash(prev, content(*r[:13]))
            db.execute("UPDATE records SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, h, r[0]))
            prev = h
        else:
            prev = r[14]
    db.close()


def test_an_untouched_trail_is_intact(trail):
    report = verify(trail)
    assert report.ok and report.problems == ()
    assert (report.records, report.head_seq, report.checkpoints) == (N, N, 3)
    assert report.summary().startswith(f"the audit trail is intact: {N} records, head seq {N}")


def test_an_edited_record_is_named(trail):
    tamper(trail, "UPDATE records SET details = '{\"argv\":[\"rm\",\"-rf\"]}' WHERE seq = 5")
    assert problems(trail) == [("edited", 5)]
    assert message(trail).startswith("record 5 (exec.start at ")
    assert message(trail).endswith(") was edited: its content no longer matches its hash")


def test_a_removed_record_is_named(trail):
    tamper(trail, "DELETE FROM records WHERE seq = 5")
    assert problems(trail) == [("removed", 5)]
    assert message(trail) == "record 5 was removed: the chain goes from record 4 to record 6"


def test_removed_records_are_named_as_a_range(trail):
    tamper(trail, "DELETE FROM records WHERE seq IN (5, 6, 7)")
    assert message(trail) == "records 5-7 were removed: the chain goes from record 4 to record 8"


def test_a_removal_hidden_by_renumbering_is_still_named(trail):
    tamper(trail, "DELETE FROM records WHERE seq = 5",
           "UPDATE records SET seq = seq - 1 WHERE seq > 5")
    assert problems(trail) == [("removed", 5)]
    assert message(trail) == ("record 5 was removed: the chain goes from record 4 to record 6 "
                              "(and the records after it renumbered to hide the gap)")


def test_the_first_records_removed(trail):
    tamper(trail, "DELETE FROM records WHERE seq <= 2")
    assert message(trail) == "records 1-2 were removed: the chain starts at record 3"


def test_reordered_records_are_named(trail):
    tamper(trail, "UPDATE records SET seq = 100 WHERE seq = 5",
           "UPDATE records SET seq = 5 WHERE seq = 6", "UPDATE records SET seq = 6 WHERE seq = 100")
    assert problems(trail) == [("moved", 5)]
    assert "record 5 (exec.start at " in message(trail)
    assert message(trail).endswith("was moved: it is stored at seq 6, after records written "
                                   "later than it (reordered)")


def test_a_record_moved_far_is_named(trail):
    tamper(trail, "UPDATE records SET seq = 100 WHERE seq = 3",
           "UPDATE records SET seq = seq - 1 WHERE seq > 3 AND seq < 100",
           f"UPDATE records SET seq = {N} WHERE seq = 100")
    assert problems(trail) == [("moved", 3)]
    assert f"stored at seq {N}" in message(trail)


def test_a_copied_record_is_named(trail):
    tamper(trail, f"INSERT INTO records SELECT {N + 1}, at, tenant, actor, request_id, "
           "trace_id, action, sandbox, iteration, suite, host, outcome, details, prev_hash, "
           "hash FROM records WHERE seq = 5")
    assert problems(trail) == [("repeated", 5)]
    assert message(trail).startswith(f"the row stored at seq {N + 1} (exec.start at ")
    assert message(trail).endswith("repeats record 5: a record was inserted or copied")


def test_records_cut_off_after_a_checkpoint_are_told(trail):
    tamper(trail, "DELETE FROM records WHERE seq > 9")
    assert problems(trail) == [("cut-off", 10)]
    assert message(trail).startswith("records after seq 9 were cut off: checkpoint line 3 "
                                     "(signed ")
    assert message(trail).endswith(f") covers the chain up to seq {N}")


def test_an_edit_with_its_hash_recomputed_is_named(trail):
    tamper(trail, "UPDATE records SET outcome = 'exit:0' WHERE seq = 5")
    rehash_only = sqlite3.connect(AuditPaths.of(trail).db, isolation_level=None)
    r = rehash_only.execute("SELECT * FROM records WHERE seq = 5").fetchone()
    rehash_only.execute("UPDATE records SET hash = ? WHERE seq = 5",
                        (chain_hash(r[13], content(*r[:13])),))
    rehash_only.close()
    assert problems(trail) == [("replaced", 5)]
    assert message(trail) == ("record 5 was replaced: its content and hash were rewritten, "
                              "and record 6 still commits to the original")


def test_a_chain_rebuilt_with_recomputed_hashes_does_not_match_its_checkpoints(trail):
    tamper(trail, "UPDATE records SET outcome = 'exit:0' WHERE seq = 6")
    rehash_from(trail, 6)
    assert problems(trail) == [("rewritten", 8), ("rewritten", 12)]
    assert "the chain was rewritten, its hashes recomputed, somewhere from seq 5 to 8" \
        in verify(trail).problems[0].message


def test_a_forged_checkpoint_signature_is_named(trail):
    paths = AuditPaths.of(trail)
    lines = paths.checkpoints.read_text().splitlines()
    last = json.loads(lines[-1])
    last["seq"] = 99  # claims more records than there ever were
    paths.checkpoints.write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")
    assert problems(trail) == [("bad-signature", 99)]
    assert message(trail).startswith("checkpoint line 3 (seq 99, signed ")
    assert message(trail).endswith(f") has a bad signature: forged, or not made with the key "
                                   f"of {paths.pub}")


def test_a_checkpoint_signed_with_another_key_is_refused(trail, tmp_path_factory):
    other = load_or_make_key(AuditPaths.of(tmp_path_factory.mktemp("other")))
    cp = Checkpoint(30, "0" * 64, 1.0)
    forged = Checkpoint(30, "0" * 64, 1.0,
                        base64.b64encode(other.sign(cp.message())).decode())
    with AuditPaths.of(trail).checkpoints.open("a") as f:
        f.write(forged.line())
    assert problems(trail) == [("bad-signature", 30)]


def test_checked_against_a_pinned_public_key(trail, tmp_path_factory):
    elsewhere = AuditPaths.of(tmp_path_factory.mktemp("pinned"))
    load_or_make_key(elsewhere)  # another key: every checkpoint fails against it
    report = verify(trail, elsewhere.pub)
    assert [p.kind for p in report.problems] == ["bad-signature"] * 3


def test_checkpoints_removed_from_an_old_trail_are_told(trail, monkeypatch):
    AuditPaths.of(trail).checkpoints.unlink()
    assert verify(trail).ok  # a young trail: its writer may not have signed yet
    monkeypatch.setattr(verifier, "GRACE_S", -1.0)
    assert problems(trail) == [("no-checkpoint", None)]


def test_text_that_is_not_utf8_shows_as_an_edit_and_the_walk_goes_on(trail):
    tamper(trail, "UPDATE records SET tenant = CAST(x'ff41' AS TEXT) WHERE seq = 3",
           "DELETE FROM records WHERE seq = 7")
    assert problems(trail) == [("edited", 3), ("removed", 7)]


# ---- as the Done-when tries it: the sqlite3 shell and `tryfleet audit verify` ---------
def shell(data_dir, sql):
    if shutil.which("sqlite3") is None:
        pytest.skip("no sqlite3 shell")
    subprocess.run(["sqlite3", str(AuditPaths.of(data_dir).db)], input=sql, text=True,
                   check=True, capture_output=True)


def test_the_cli_names_a_record_edited_in_the_sqlite3_shell(trail, capsys):
    shell(trail, "DROP TRIGGER records_no_update;\n"
                 "UPDATE records SET details = '{}' WHERE seq = 5;\n")
    assert cli(["--data-dir", str(trail), "audit", "verify"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("record 5 (exec.start at ") and out[0].endswith(
        "was edited: its content no longer matches its hash")
    assert out[1].startswith("the audit trail is NOT intact: 1 problem")


def test_the_cli_names_a_record_deleted_in_the_sqlite3_shell(trail, capsys):
    shell(trail, "DROP TRIGGER records_no_delete;\nDELETE FROM records WHERE seq = 6;\n")
    assert cli(["--data-dir", str(trail), "audit", "verify"]) == 1
    assert capsys.readouterr().out.splitlines()[0] == \
        "record 6 was removed: the chain goes from record 5 to record 7"


def test_the_cli_says_when_the_last_records_were_cut_off(trail, capsys):
    shell(trail, "DROP TRIGGER records_no_delete;\nDELETE FROM records WHERE seq > 10;\n")
    assert cli(["--data-dir", str(trail), "audit", "verify"]) == 1
    assert capsys.readouterr().out.startswith("records after seq 10 were cut off: ")


def test_the_cli_says_an_intact_trail_is_intact(trail, capsys):
    assert cli(["--data-dir", str(trail), "audit", "verify"]) == 0
    assert capsys.readouterr().out.startswith(f"the audit trail is intact: {N} records")


def test_the_cli_exits_125_without_a_trail(tmp_path, capsys):
    assert cli(["--data-dir", str(tmp_path), "audit", "verify"]) == 125
    assert "no audit trail at" in capsys.readouterr().err


def test_records_cut_off_then_appended_to_again_are_told(trail):
    tamper(trail, "DELETE FROM records WHERE seq > 9")
    audit = Audit(trail)  # the next appends take seqs 10, 11, 12 again
    for _ in range(3):
        audit.record("exec.start", tenant="acme", actor="key:k1", request_id="later")
    audit.close()
    assert problems(trail) == [("cut-off", 10)]
    assert message(trail).startswith("records after seq 9 were cut off: checkpoint line 3 "
                                     "(signed ")
    assert message(trail).endswith(f"covers the chain up to seq {N}, and the records now at "
                                   f"seq 10-{N} were written after it")


def test_a_writer_that_sees_its_head_go_back_says_so_and_goes_on(tmp_path, caplog):
    audit = Audit(tmp_path)
    try:
        for _ in range(3):
            audit.record("exec.start", tenant="acme", actor="key:k1", request_id="r")
        tamper(tmp_path, "DELETE FROM records WHERE seq > 1")
        assert audit.record("exec.start", tenant="acme", actor="key:k1", request_id="r") == 2
    finally:
        audit.close()
    assert "head went back from seq 3 to seq 1" in caplog.text


def test_records_cut_off_then_appended_to_short_of_the_checkpoint_are_told(trail):
    tamper(trail, "DELETE FROM records WHERE seq > 9")
    audit = Audit(trail)
    audit.record("exec.start", tenant="acme", actor="key:k1", request_id="later")  # seq 10
    audit.close()
    assert problems(trail) == [("cut-off", 10)]
    assert message(trail).startswith("records after seq 9 were cut off: checkpoint line 3 ")
    assert message(trail).endswith(f"covers the chain up to seq {N}, and the record now at "
                                   "seq 10 was written after it")
