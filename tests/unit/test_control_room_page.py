"""The control room's page as shipped: what it must never do with what the API gives it, and
what it must never carry inline (its CSP would refuse it: tests/integration/test_control_room.py
watches the browser for refusals); and the chart's minutes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tryfleet.gateway.controlroom.snapshot import per_minute

STATIC = Path(__file__).parents[2] / "gateway" / "controlroom" / "static"


@pytest.mark.parametrize("sink", ["innerHTML", "outerHTML", "insertAdjacentHTML",
                                  "document.write", "eval(", "new Function", "setTimeout(\"",
                                  "localStorage", "document.cookie", "srcdoc"])
def test_the_script_inserts_nothing_as_markup_and_keeps_the_key_in_the_tab(sink: str) -> None:
    assert sink not in (STATIC / "app.js").read_text()


def test_the_key_goes_in_a_header_and_is_forgotten_at_sign_out() -> None:
    script = (STATIC / "app.js").read_text()
    assert "Authorization: `Bearer ${sessionStorage.getItem(KEY)" in script
    assert "new EventSource" not in script  # it sends no header: the key would go in a URL
    sign_out = script[script.index("function signOut"):]
    assert "sessionStorage.removeItem(KEY)" in sign_out[:200]


def test_the_page_has_no_inline_script_style_or_handler() -> None:
    page = (STATIC / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)", page) == []
    assert "<style" not in page and " style=" not in page
    assert re.findall(r"\son[a-z]+=", page) == []


def test_a_form_of_the_page_never_submits_anywhere() -> None:
    """Were the script to fail, a form would send the key in a URL: each posts to the page
    itself, and the CSP's form-action 'none' stops even that."""
    page = (STATIC / "index.html").read_text()
    forms = re.findall(r"<form[^>]*>", page)
    assert forms and all('method="post"' in f and 'action=""' in f for f in forms)


def test_every_minute_of_the_window_is_there_oldest_first() -> None:
    now = 1_000_000 * 60 + 30.0  # half a minute into a minute
    rows = [(now // 60 * 60 - 120, "SUCCEEDED", 2), (now // 60 * 60, "FAILED", 1),
            (now // 60 * 60, "SUCCEEDED", 3), (0, "SUCCEEDED", 9)]  # the last: long before
    got = per_minute([(int(a), s, n) for a, s, n in rows], now, minutes=5)
    assert [p["at"] for p in got] == [int(now // 60 * 60) - 60 * k for k in (4, 3, 2, 1, 0)]
    assert [p["counts"] for p in got] == [{}, {}, {"SUCCEEDED": 2}, {},
                                          {"FAILED": 1, "SUCCEEDED": 3}]
