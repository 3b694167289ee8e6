"""A real Prometheus (Debian's, installed by scripts/setup.sh) scrapes a real fleet with the
scrape config of the README's "Metrics" section, and answers the iteration counts by state and
the sandbox start-time histogram after a small batch: Ray in this process, the real node agent
(real VMs of the base image), the scheduler and the gateway actor on a free loopback port;
Prometheus on another, with a data dir of the test's own, stopped at the end."""

import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.unit.metricsfleet import readme_scrape_config
from tests.waiting import until
from tryfleet.gateway.keys import Scope
from tryfleet.local import free_port

from .vmfleet import vm_fleet

pytestmark = pytest.mark.vm
HOST = "promtest"
PROMETHEUS = Path("/usr/bin/prometheus")
SUITE = "prom-1"
BATCH = [{"image": "base", "command": ["true"], "cpus": 1, "mem_mib": 256},
         {"image": "base", "command": ["python3", "-c", "print(6*7)"], "cpus": 1, "mem_mib": 256},
         {"image": "base", "command": ["sh", "-c", "exit 3"], "cpus": 1, "mem_mib": 256}]


@pytest.fixture(scope="module")
def fleet(data_dir):
    if not PROMETHEUS.exists():
        pytest.fail(f"{PROMETHEUS} is missing: run scripts/setup.sh (it installs prometheus)")
    with vm_fleet(data_dir, HOST) as v:
        _, scraper = v.keys.create("ops", frozenset({Scope.METRICS}), created_by="test")
        _, acme = v.keys.create("acme", frozenset({Scope.BATCH}), created_by="test")
        yield {"url": v.url, "scraper": scraper, "acme": acme}


@pytest.fixture(scope="module")
def prometheus(fleet, tmp_path_factory):
    """Prometheus scraping the fleet every second with the README's config: its target moved
    to the test's gateway, its key file to the test's metrics key. Its base URL."""
    work = tmp_path_factory.mktemp("prometheus")
    key = work / "tryfleet.key"
    key.write_text(fleet["scraper"] + "\n")
    key.chmod(0o600)
    config = readme_scrape_config()
    (job,) = config["scrape_configs"]
    job.update(scrape_interval="1s", scrape_timeout="1s",
               static_configs=[{"targets": [urlsplit(fleet["url"]).netloc]}])
    job["authorization"]["credentials_file"] = str(key)
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (work / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={work / 'prometheus.yml'}",
             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        until(lambda: _ready(url), 60, lambda: (work / "prometheus.log").read_text()[-2000:])
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def batch(fleet, prometheus):
    """A batch of three iterations (two succeed, one fails), ended."""
    with httpx.Client(base_url=fleet["url"], timeout=60,
                      headers={"Authorization": f"Bearer {fleet['acme']}"}) as c:
        sent = c.post("/v1/batches", json={"suite": SUITE, "iterations": BATCH})
        assert sent.status_code == 201, sent.text

        def ended() -> int:
            counts = c.get(f"/v1/suites/{SUITE}").json()["counts"]
            return counts.get("SUCCEEDED", 0) + counts.get("FAILED", 0)

        until(lambda: ended() == 3, 900, lambda: c.get(f"/v1/suites/{SUITE}").json())


def query(url: str, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant query's vector: each series' labels (without __name__) -> its value."""
    got = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert got["status"] == "success", got
    return {tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")):
            float(r["value"][1]) for r in got["data"]["result"]}


def targets(url: str) -> object:
    return httpx.get(f"{url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]


def test_prometheus_scrapes_the_gateway_with_the_readmes_config(prometheus):
    until(lambda: list(query(prometheus, 'up{job="tryfleet"}').values()) == [1], 60,
          lambda: targets(prometheus))
    until(lambda: list(query(prometheus, f'tryfleet_host_up{{host="{HOST}"}}').values()) == [1],
          30, lambda: query(prometheus, "tryfleet_host_up"))


def test_prometheus_answers_the_iteration_counts_by_state(prometheus, batch):
    def by_state() -> dict[str, float]:
        got = query(prometheus, "sum by (state) (tryfleet_iterations_total)")
        return {dict(labels)["state"]: v for labels, v in got.items()}

    until(lambda: by_state().get("SUCCEEDED") == 2 and by_state().get("FAILED") == 1, 60,
          by_state)
    suite = query(prometheus, f'tryfleet_suite_iterations{{suite="{SUITE}", state="FAILED"}}')
    assert list(suite.values()) == [1]


def test_prometheus_answers_the_sandbox_start_time_histogram(prometheus, batch):
    def starts() -> dict[str, float]:
        got = query(prometheus, 'sum by (origin) (tryfleet_sandbox_start_seconds_count'
                                f'{{host="{HOST}", image="base"}})')
        return {dict(labels)["origin"]: v for labels, v in got.items()}

    until(lambda: sum(starts().values()) >= 3, 60, starts)
    assert set(starts()) <= {"pool", "restore", "boot"}
    median = query(prometheus, "histogram_quantile(0.5, sum by (le) "
                               "(tryfleet_sandbox_start_seconds_bucket))")
    (seconds,) = median.values()
    assert 0 < seconds < 120


def test_the_gateway_serves_tryfleets_metrics_and_no_library_s(prometheus, batch):
    names = {dict(labels)["__name__"] for labels in _series(prometheus, '{job="tryfleet"}')}
    scraped = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
               "scrape_samples_post_metric_relabeling", "scrape_series_added"}
    assert {"tryfleet_iterations_total", "process_resident_memory_bytes"} <= names
    assert {n for n in names - scraped
            if not n.startswith(("tryfleet_", "process_", "python_"))} == set()


def _series(url: str, match: str) -> list[tuple[tuple[str, str], ...]]:
    got = httpx.get(f"{url}/api/v1/series", params={"match[]": match}, timeout=10).json()
    assert got["status"] == "success", got
    return [tuple(sorted(s.items())) for s in got["data"]]
