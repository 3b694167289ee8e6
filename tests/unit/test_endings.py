"""The words an iteration's ending gets when its state and exit code do not say it all."""

from tryfleet.nodeagent.endings import explain
from tryfleet.nodeagent.records import ExecResult, State

OOM_LINE = (b"[   25.457280] Out of memory: Killed process 104 (python3) total-vm:197776kB, "
            b"anon-rss:185780kB\r\n")


def result(exit_code=None, signal=None, timed_out=False):
    return ExecResult(exit_code, signal, b"", b"Killed\n", False, False, timed_out, 1.0)


def test_a_deadline_says_how_long_it_was_and_what_to_do(tmp_path):
    said = explain(State.TIMED_OUT, result(timed_out=True), 2.5, 256, tmp_path / "none.log")
    assert "deadline of 2.5 s" in said and "timeout_s" in said


def test_a_command_the_guest_kernel_killed_for_memory_names_it(tmp_path):
    console = tmp_path / "console.log"
    console.write_bytes(b"boot\r\n" * 20_000 + OOM_LINE)
    said = explain(State.FAILED, result(exit_code=137), 600, 256, console)
    assert "ran out of memory" in said and "python3 (pid 104)" in said and "256 MiB" in said


def test_a_kill_without_an_out_of_memory_report_gets_no_guess(tmp_path):
    console = tmp_path / "console.log"
    console.write_bytes(b"tryfleet-agent: ready\r\n")
    assert explain(State.FAILED, result(signal=9), 600, 256, console) is None
    assert explain(State.FAILED, result(exit_code=1), 600, 256, console) is None
    assert explain(State.SUCCEEDED, result(exit_code=0), 600, 256, tmp_path / "gone") is None
