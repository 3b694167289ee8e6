"""The control room in a real browser: Debian's Chromium (headless, 1366x768, a laptop's
screen) driven by Selenium through Debian's chromedriver, against a real fleet (vmfleet.py:
Ray in this process, the real node agent with real VMs, the scheduler, the gateway on a free
loopback port). The steps of a person at the page, in order, each one test:

sign in with an admin key and see the host; watch a batch's progress move; open an iteration's
output (markup it prints shown as text); freeze its suite from the page (the confirmation says
what will stop) and see its queued work stay queued while other work runs; thaw it and see it
finish; find the freeze in the audit feed, with who did it; see a sandbox and its recent
commands; sign in with another tenant's key and see none of that work.

The batch: 6 iterations of `sleep 3; echo N`, each holding the limit `one` (sized 1), so one
runs at a time and the rest wait queued. A screenshot of each step goes to
tests/output/control-room/ (printed). The browser reaches only loopback: every host name but
127.0.0.1 resolves to nothing, and its background services are off.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.waiting import until
from tryfleet import cluster
from tryfleet.gateway.keys import Scope
from tryfleet.scheduler.ledger_reads import LedgerView

from .vmfleet import VmFleet, vm_fleet

pytestmark = pytest.mark.vm

HOST = "roomtest"
SUITE = "room"
N = 6
SHOTS = Path(__file__).parents[1] / "output" / "control-room"
MARKUP = "<img src=x onerror=alert(1)>"  # what a hostile guest prints, shown as text
WAIT_S = 180  # a step that waits on VMs (TCG here: a VM boots in seconds)
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
QUIET = ("--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--no-default-browser-check", "--disable-default-apps",
         "--disable-domain-reliability", "--disable-client-side-phishing-detection",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")


class Room:
    """The fleet, its keys, and a browser at the control room."""

    def __init__(self, fleet: VmFleet, browser: WebDriver) -> None:
        self.fleet, self.browser = fleet, browser
        self.http = httpx.Client(base_url=fleet.url, timeout=120)
        self.admin_id, self.admin = self._key("default", Scope.ADMIN)
        self.acme_id, self.acme = self._key("acme", Scope.BATCH, Scope.SANDBOX, Scope.READ)
        self.bolt_id, self.bolt = self._key("bolt", Scope.BATCH, Scope.SANDBOX, Scope.READ)
        self.ledger = LedgerView(cluster.ledger_path(fleet.data))

    def _key(self, tenant: str, *scopes: Scope) -> tuple[str, str]:
        info, token = self.fleet.keys.create(tenant, frozenset(scopes), created_by="test")
        return info.id, token

    def api(self, token: str, method: str, path: str, **kw: Any) -> Any:
        r = self.http.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)
        assert r.is_success, r.text
        return None if r.status_code == 204 else r.json()

    def states(self, suite: str = SUITE, tenant: str = "acme") -> dict[str, int]:
        """The suite's iterations by state, as the ledger has them (read from its file: no
        API call, which would fill the audit feed the page shows)."""
        return self.ledger.counts(suite, tenant)

    # ---- the page ----------------------------------------------------------------------
    def wait(self, what: str, check: Any, timeout_s: float = WAIT_S) -> Any:
        """Until check() is true; an element drawn anew meanwhile (the page draws a part
        again when what it shows changes) is looked up again."""
        return WebDriverWait(self.browser, timeout_s, poll_frequency=0.2, ignored_exceptions=(
            NoSuchElementException, StaleElementReferenceException)).until(
            lambda _: check(), message=what)

    def click(self, css: str, timeout_s: float = 30) -> None:
        def clicked() -> bool:
            self.one(css).click()
            return True

        self.wait(f"a click on {css}", clicked, timeout_s)

    def text(self, css: str) -> str:
        got: str = self.browser.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", css)
        return got

    def attr(self, css: str, name: str) -> str | None:
        got: str | None = self.browser.execute_script(
            "const e = document.querySelector(arguments[0]); "
            "return e ? e.getAttribute(arguments[1]) : null", css, name)
        return got

    def find(self, css: str) -> list[WebElement]:
        return self.browser.find_elements(By.CSS_SELECTOR, css)

    def one(self, css: str) -> WebElement:
        return self.browser.find_element(By.CSS_SELECTOR, css)

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.browser.save_screenshot(str(path))
        print(f"screenshot: {path}")

    def sign_in(self, token: str, person: str = "") -> None:
        self.browser.get(self.fleet.url + "/")
        self.one("#key").send_keys(token)
        if person:
            self.one("#person").send_keys(person)
        self.one("#signin-button").click()
        self.wait("signed in", lambda: "in" in (self.attr("body", "class") or "").split())

    def suite_row(self, suite: str = SUITE) -> str:
        """The text of the suite's row ("" when there is none)."""
        return self.text(f"#suites tbody tr[data-suite='{suite}']")

    def done(self) -> int:
        return int(self.attr(f"#suites tbody tr[data-suite='{SUITE}']", "data-done") or -1)

    def confirm(self, expect: str) -> str:
        self.wait("the confirmation", lambda: self.one("#confirm").is_displayed(), 10)
        text = self.one("#confirm-text").text
        assert expect in text, text
        return text


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--window-size=1366,768",
                "--disable-dev-shm-usage", *QUIET):  # --no-sandbox: these tests run as root
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_window_size(1366, 768)
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def room(data_dir: Path, browser: WebDriver) -> Iterator[Room]:
    with vm_fleet(data_dir, HOST) as fleet:
        r = Room(fleet, browser)
        r.api(r.admin, "PUT", "/v1/fleet/limits/one", json={"value": 1})
        small = {"image": "base", "cpus": 1, "mem_mib": 256, "limits": ["one"]}
        r.api(r.acme, "POST", "/v1/batches", json={"suite": SUITE, "iterations": [
            {**small, "id": f"it-{n}",
             "command": ["sh", "-c", f"sleep 3; echo N={n}; echo {MARKUP!r}"]}
            for n in range(N)]})
        r.api(r.bolt, "POST", "/v1/batches", json={"suite": "bolts", "iterations": [
            {**small, "id": "bolt-1", "command": ["echo", "bolt's own"]}]})
        yield r
        r.http.close()
        r.ledger.close()


def test_an_admin_signs_in_and_sees_the_host(room: Room) -> None:
    room.sign_in(room.admin, "ana@laptop")
    room.wait("the host", lambda: room.find(f"#hosts tbody tr[data-host='{HOST}']"), 60)
    cells = room.text(f"#hosts tbody tr[data-host='{HOST}']")
    assert ("tcg" in cells or "kvm" in cells) and "GiB" in cells  # accel and capacity
    room.wait("the suite", room.suite_row, 60)
    room.shot("01-signed-in")


def test_the_batchs_progress_moves(room: Room) -> None:
    seen = room.done()
    room.wait("an iteration ends", lambda: room.done() > seen)
    row = room.browser.execute_script(
        "const r = document.querySelector(\"#suites tbody tr[data-suite='room']\"); "
        "return [r.dataset.done, r.querySelector('progress').value]")
    assert row[0] == str(int(row[1]))  # the bar shows what has ended
    room.shot("02-progress")


def test_an_iterations_output_opens(room: Room) -> None:
    room.click("#suites tbody tr[data-suite='room']")
    ended = "#iterations tbody tr[data-state='SUCCEEDED']"
    room.wait("an ended iteration in the list", lambda: room.find(ended))
    iid = room.attr(ended, "data-iteration") or ""
    n = iid.removeprefix("it-")
    room.click(f"#iterations tbody tr[data-iteration='{iid}']")
    room.wait("its output", lambda: f"N={n}" in room.text("#it-stdout"), 30)
    assert MARKUP in room.text("#it-stdout") and room.find("#iteration img") == []
    facts = room.text("#it-facts")
    assert HOST in facts and "SUCCEEDED" in facts  # an admin sees the host
    assert room.find("#it-attempts tbody tr")
    room.shot("03-iteration-output")
    room.one("#it-close").click()


def test_freezing_the_suite_from_the_page_holds_its_queued_work(room: Room) -> None:
    room.click("#suites tbody tr[data-suite='room'] button[data-act='freeze']")
    text = room.confirm("queued iteration")
    assert "will not start" in text and "running continue" in text
    room.one("#confirm-reason").send_keys("looking at it <i>now</i>")
    room.shot("04-freeze-confirmation")
    room.one("#confirm-ok").click()
    room.wait("the suite shown frozen", lambda: "frozen" in room.suite_row(), 30)
    held = room.states().get("QUEUED", 0)
    assert held > 0, f"the batch ended before the freeze: {room.states()}"
    # Other work under the same limit still runs, and ends, while the suite's stays queued.
    room.api(room.acme, "POST", "/v1/iterations", json={
        "suite": "canary", "id": "canary", "image": "base", "cpus": 1, "mem_mib": 256,
        "limits": ["one"], "command": ["true"]})
    until(lambda: room.states("canary") == {"SUCCEEDED": 1}, timeout_s=WAIT_S,
          explain=room.states)
    assert room.states().get("QUEUED", 0) == held
    assert not {"PLACED", "RUNNING"} & set(room.states())
    room.wait("the page shows them queued", lambda: room.text(
        "#suites tbody tr[data-suite='room'] td.queued") == str(held), 10)
    room.shot("05-frozen")


def test_thawing_it_lets_them_finish(room: Room) -> None:
    room.click("#suites tbody tr[data-suite='room'] button[data-act='thaw']")
    room.confirm("starts again")
    room.one("#confirm-ok").click()
    room.wait("every iteration ends", lambda: room.done() == N)
    assert room.states() == {"SUCCEEDED": N}
    room.shot("06-thawed-and-done")


def test_the_freeze_is_in_the_audit_feed_with_who_did_it(room: Room) -> None:
    room.one("#audit-action").send_keys("switch.*")  # what the trail holds, searched
    flip = "#audit li[data-action='switch.flip']"
    room.wait("the freeze in the feed", lambda: room.find(flip), 10)
    text = room.text(flip)
    assert f"key:{room.admin_id}" in text and "ana@laptop" in text
    assert "looking at it <i>now</i>" in text and room.find("#audit i") == []
    assert room.find("#audit li[data-action='switch.lift']")
    room.shot("07-audit-feed")
    room.click(f"{flip} a")  # the request's trace
    room.wait("the trace", lambda: room.one("#trace").is_displayed(), 10)
    assert "switch.flip" in room.text("#trace-list")
    room.shot("08-trace")
    room.one("#trace-close").click()


def test_a_sandbox_shows_with_its_recent_commands(room: Room) -> None:
    box = room.api(room.acme, "POST", "/v1/sandboxes", json={
        "image": "base", "cpus": 1, "mem_mib": 256, "timeout_s": 600})
    room.api(room.acme, "POST", f"/v1/sandboxes/{box['id']}/exec",
             json={"argv": ["echo", "from-the-agent"]})
    item = f"#sandboxes li[data-sandbox='{box['id']}']"
    room.wait("the sandbox", lambda: room.find(item), 30)
    room.click(f"{item} .sid")
    room.wait("its commands", lambda: "echo from-the-agent" in room.text("#commands"), 30)
    room.shot("09-sandbox")
    room.api(room.acme, "DELETE", f"/v1/sandboxes/{box['id']}")


def test_another_tenants_key_sees_none_of_that_work(room: Room) -> None:
    room.one("#signout").click()
    room.wait("signed out", lambda: room.one("#signin-panel").is_displayed(), 10)
    assert room.browser.execute_script("return sessionStorage.length") == 0
    room.sign_in(room.bolt)
    room.wait("bolt's own suite", lambda: room.suite_row("bolts"), 60)
    room.wait("bolt's audit feed", lambda: room.find("#audit li"), 30)
    assert room.suite_row() == "" and room.suite_row("canary") == ""
    page = room.text("main")
    assert "acme" not in page and "it-0" not in page and "ana@laptop" not in page
    assert not room.one("#hosts").is_displayed() and not room.one("#switches-panel").is_displayed()
    room.shot("10-another-tenant")


def test_the_page_broke_no_rule_of_its_security_policy(room: Room) -> None:
    logged = room.browser.get_log("browser")
    refused = [e for e in logged if "Content Security Policy" in e.get("message", "")]
    errors = [e for e in logged if e.get("level") == "SEVERE"]
    assert refused == [] and errors == [], logged
