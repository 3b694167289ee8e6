import pytest

from tryfleet.nodeagent import NodeAgentError, host
from tryfleet.nodeagent.fake_hv import FakeHypervisor


def test_parse_psi():
    text = ("some avg10=1.50 avg60=0.25 avg300=0.00 total=123\n"
            "full avg10=0.75 avg60=0.00 avg300=0.00 total=45\n")
    assert host.parse_psi(text) == {
        "some_avg10": 1.5, "some_avg60": 0.25, "some_avg300": 0.0,
        "full_avg10": 0.75, "full_avg60": 0.0, "full_avg300": 0.0,
    }


def test_read_pressure_from_a_proc_dir(tmp_path):
    (tmp_path / "cpu").write_text("some avg10=12.00 avg60=1 avg300=0 total=1\n")
    (tmp_path / "memory").write_text("some avg10=3.00 avg60=0 avg300=0 total=1\n"
                                     "full avg10=1.00 avg60=0 avg300=0 total=1\n")
    p = host.read_pressure(tmp_path)  # no io file: reads as zero, not an error
    assert (p.cpu_some_avg10, p.memory_some_avg10, p.memory_full_avg10, p.io_some_avg10) == \
        (12.0, 3.0, 1.0, 0.0)


class MarkerHypervisor(FakeHypervisor):
    """A canary that boots: writes the marker the real initramfs prints."""

    def start(self, spec):
        super().start(spec)
        spec.console_log.write_bytes(b"[0.5] ...\n" + host.CANARY_MARKER + b"\n")


@pytest.fixture
def kvm_opens(monkeypatch):
    monkeypatch.delenv("TRYFLEET_ACCEL", raising=False)
    monkeypatch.setattr(host, "kvm_usable", lambda: None)


def probe(hv, tmp_path, **kw):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    return host.probe_accel(hv, kernel, tmp_path / "initrd", tmp_path / "work",
                            "tryfleet-x-canary", **kw)


def test_canary_that_boots_means_kvm(kvm_opens, tmp_path):
    hv = MarkerHypervisor()
    report = probe(hv, tmp_path)
    assert report.accel == "kvm" and hv.list_domains() == []


def test_canary_that_hangs_means_tcg_within_the_deadline(kvm_opens, tmp_path):
    hv = FakeHypervisor(never_boot=True)
    report = probe(hv, tmp_path, deadline_s=0.3)
    assert report.accel == "tcg" and "did not boot" in report.reason
    assert hv.list_domains() == []  # the hung canary was destroyed


def test_canary_that_cannot_start_means_tcg(kvm_opens, tmp_path):
    report = probe(FakeHypervisor(fail_start=True), tmp_path)
    assert report.accel == "tcg" and "failed to start" in report.reason


def test_probe_result_is_cached_per_boot(kvm_opens, tmp_path):
    cache = tmp_path / "accel.json"
    assert probe(MarkerHypervisor(), tmp_path, cache=cache).accel == "kvm"
    # A hypervisor that would now say tcg is not asked: the cached answer stands.
    assert probe(FakeHypervisor(fail_start=True), tmp_path, cache=cache).accel == "kvm"


def test_no_kernel_yet_means_tcg_unverified(kvm_opens, tmp_path):
    report = host.probe_accel(FakeHypervisor(), None, None, tmp_path, "tryfleet-x-canary")
    assert report.accel == "tcg" and "tryfleet image build" in report.reason


def test_env_override_and_its_validation(monkeypatch, tmp_path):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    assert host.probe_accel(MarkerHypervisor(), None, None, tmp_path, "n").accel == "tcg"
    monkeypatch.setenv("TRYFLEET_ACCEL", "fast")
    with pytest.raises(NodeAgentError, match="TRYFLEET_ACCEL='fast' is not one of"):
        host.probe_accel(MarkerHypervisor(), None, None, tmp_path, "n")


def test_unopenable_kvm_is_tcg_without_a_canary(monkeypatch, tmp_path):
    monkeypatch.delenv("TRYFLEET_ACCEL", raising=False)
    monkeypatch.setattr(host, "kvm_usable", lambda: "/dev/kvm cannot be opened (No such file)")
    hv = MarkerHypervisor()
    report = probe(hv, tmp_path)
    assert report.accel == "tcg" and hv.started == []
