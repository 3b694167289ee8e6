"""The batch file's reader: what a spec line may hold."""

from pathlib import Path

from tryfleet.commands.batch import read_specs


def test_a_spec_cannot_ask_for_egress_and_is_told_where_network_comes_from(tmp_path: Path) -> None:
    specs = tmp_path / "specs.jsonl"
    specs.write_text('{"image": "base", "command": ["true"], "egress": ["x.test:80"]}\n')
    its, problems = read_specs(specs, "s")
    assert its == [] and len(problems) == 1
    assert "specs.jsonl:1" in problems[0] and "tenant's policy" in problems[0]


def test_the_known_fields_it_names_do_not_include_egress(tmp_path: Path) -> None:
    specs = tmp_path / "specs.jsonl"
    specs.write_text('{"image": "base", "argv": ["true"]}\n')
    _, problems = read_specs(specs, "s")
    assert "unknown field(s) argv" in problems[0] and "egress" not in problems[0]
