"""The secrets store on the head: owner-only files, names without values, refusals."""

import stat

import pytest

from tryfleet.errors import BadRequest, NotFound
from tryfleet.secretstore import SecretStore


@pytest.fixture
def store(tmp_path):
    return SecretStore(tmp_path)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_the_file_is_0600_in_a_0700_directory(store, tmp_path):
    store.set("acme", "TOKEN", "s3cret-value")
    assert mode(tmp_path / "secrets") == 0o700
    assert mode(tmp_path / "secrets" / "acme.json") == 0o600


def test_a_directory_made_too_open_is_put_right(store, tmp_path):
    (tmp_path / "secrets").mkdir(mode=0o755)
    store.set("acme", "TOKEN", "s3cret-value")
    assert mode(tmp_path / "secrets") == 0o700


def test_a_listing_names_secrets_without_values(store):
    store.set("acme", "B_TOKEN", "value-bbbb", by="key:k1")
    store.set("acme", "A_TOKEN", "value-aaaa")
    got = store.list("acme")
    assert [s.name for s in got] == ["A_TOKEN", "B_TOKEN"] and got[1].set_by == "key:k1"
    assert "value" not in repr(got)


def test_values_are_the_tenants_own(store):
    store.set("acme", "TOKEN", "acme-value")
    store.set("zeta", "TOKEN", "zeta-value")
    assert store.values("acme", ["TOKEN"]) == {"TOKEN": "acme-value"}


def test_an_unknown_name_is_not_found_naming_it(store):
    store.set("acme", "TOKEN", "acme-value")
    with pytest.raises(NotFound, match="'OTHER'"):
        store.values("acme", ["TOKEN", "OTHER"])


def test_removed_is_gone_and_removing_again_is_not_found(store):
    store.set("acme", "TOKEN", "acme-value")
    store.remove("acme", "TOKEN")
    with pytest.raises(NotFound):
        store.remove("acme", "TOKEN")


def test_a_value_too_short_to_mask_is_refused(store):
    with pytest.raises(BadRequest, match="4 to"):
        store.set("acme", "TOKEN", "abc")


@pytest.mark.parametrize("name", ["1ABC", "A-B", "", "A B", "../x"])
def test_a_name_that_is_no_variable_name_is_refused(store, name):
    with pytest.raises(BadRequest, match="environment variable"):
        store.set("acme", name, "long-enough")


def test_a_tenant_that_is_no_tenant_name_is_refused(store):
    with pytest.raises(BadRequest, match="tenant"):
        store.set("../etc", "TOKEN", "long-enough")


def test_mask_values_are_every_value_longest_first(store):
    store.set("acme", "A", "short-1")
    store.set("acme", "B", "much-longer-2")
    assert store.mask_values("acme") == (b"much-longer-2", b"short-1")


def test_a_second_store_on_the_same_directory_sees_a_change(store, tmp_path):
    other = SecretStore(tmp_path)
    assert other.mask_values("acme") == ()
    store.set("acme", "A", "value-1234")
    assert other.mask_values("acme") == (b"value-1234",)
