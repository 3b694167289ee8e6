"""The ledger's record of interactive sandboxes (SQLite): recorded open, closed once with its
reason, read per tenant, listed by page, found again by a new connection."""

import pytest

from tryfleet.errors import BadRequest, NotFound
from tryfleet.scheduler.sandboxes import SandboxBook, SandboxRecord

T0 = 1_000_000.0


def rec(sid: str, tenant: str = "acme", **kw) -> SandboxRecord:
    fields = {"image": "base", "cpus": 1, "mem_mib": 512, "disk_mib": None, "host": "h1",
              "state": "open", "created_at": T0, "expires_at": T0 + 600, **kw}
    return SandboxRecord(sid, tenant, **fields)


@pytest.fixture
def book(tmp_path):
    b = SandboxBook(tmp_path / "ledger.db")
    yield b
    b.close()


def test_a_sandbox_is_recorded_with_who_asked_and_read_back_whole(book):
    book.record(rec("s1", key_id="k1", request_id="req_1", metadata={"pr": "42"}))
    book.set_vm("s1", "tryfleet-abc-1")
    got = book.get("s1", "acme")
    assert (got.key_id, got.request_id, got.metadata, got.vm) == (
        "k1", "req_1", {"pr": "42"}, "tryfleet-abc-1")
    assert got.to_json()["state"] == "open"


def test_another_tenants_sandbox_is_not_found_exactly_like_an_unknown_id(book):
    book.record(rec("s1", tenant="acme"))
    with pytest.raises(NotFound) as theirs:
        book.get("s1", "globex")
    with pytest.raises(NotFound) as nobodys:
        book.get("s9", "globex")
    assert str(theirs.value).replace("s1", "ID") == str(nobodys.value).replace("s9", "ID")
    assert book.get("s1", None).tenant == "acme"  # an admin sees it


def test_closing_happens_once_and_keeps_the_first_reason(book):
    book.record(rec("s1"))
    assert book.close_record("s1", "its timeout passed", now=T0 + 601)
    assert not book.close_record("s1", "closed by request")
    got = book.get("s1")
    assert (got.state, got.close_reason, got.closed_at) == ("closed", "its timeout passed",
                                                            T0 + 601)
    assert not book.extend("s1", T0 + 9999)
    book.set_vm("s1", "late")
    assert book.get("s1").vm is None


def test_an_id_is_recorded_once(book):
    book.record(rec("s1"))
    with pytest.raises(BadRequest, match="already"):
        book.record(rec("s1"))


def test_listing_pages_through_one_tenants_sandboxes_by_state(book):
    for n in range(5):
        book.record(rec(f"s{n}"))
    book.record(rec("other", tenant="globex"))
    book.close_record("s1", "closed by request")
    page, cursor = book.page("acme", "open", limit=2)
    assert [r.id for r in page] == ["s0", "s2"] and cursor is not None
    page, cursor = book.page("acme", "open", limit=2, cursor=cursor)
    assert [r.id for r in page] == ["s3", "s4"] and cursor is None
    assert [r.id for r in book.page("acme", "closed")[0]] == ["s1"]
    assert len(book.page("acme", "all")[0]) == 5 and len(book.page(None, "all")[0]) == 6


@pytest.mark.parametrize("kw", [{"state": "gone"}, {"limit": 0}, {"limit": 10**6},
                                {"cursor": "x"}, {"cursor": "-1"}])
def test_a_bad_page_request_is_refused(book, kw):
    with pytest.raises(BadRequest):
        book.page("acme", **kw)


def test_open_sandboxes_survive_a_new_connection(tmp_path, book):
    book.record(rec("s1"))
    book.record(rec("s2"))
    book.close_record("s2", "closed by request")
    again = SandboxBook(tmp_path / "ledger.db")
    try:
        assert [r.id for r in again.open_records()] == ["s1"]
    finally:
        again.close()


def test_listing_filters_by_every_metadata_pair_image_and_start(book):
    book.record(rec("s1", metadata={"suite": "a", "n": "1"}))
    book.record(rec("s2", metadata={"suite": "a", "n": "2"}, image="other", created_at=T0 + 5))
    book.record(rec("s3", metadata={"suite": "b", "odd key '\"": "x"}, created_at=T0 + 9))
    ids = lambda **kw: [r.id for r in book.page("acme", "open", 10, None, **kw)[0]]  # noqa: E731
    assert ids(metadata={"suite": "a"}) == ["s1", "s2"]
    assert ids(metadata={"suite": "a", "n": "2"}) == ["s2"]
    assert ids(metadata={"odd key '\"": "x"}) == ["s3"]
    assert ids(image="other") == ["s2"] and ids(created_after=T0 + 5) == ["s2", "s3"]
    page, nxt = book.page("acme", "open", 1, None, metadata={"suite": "a"})
    assert [r.id for r in page] == ["s1"]
    assert [r.id for r in book.page("acme", "open", 1, nxt, metadata={"suite": "a"})[0]] == [
        "s2"]
