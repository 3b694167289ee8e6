"""Writes the demo campaign: JSONL iterations over several suites, some passing, some failing,
some timing out, the way agents' tries look. Usage: python scripts/demo_campaign.py OUT.jsonl"""

import json
import sys

PASSING = ("def test_add():\n    assert 1 + 1 == 2\n\n"
           "def test_upper():\n    assert 'a'.upper() == 'A'\n")
FAILING = "def test_off_by_one():\n    assert sum(range(10)) == 55\n"
MIGRATION = ("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT);\n"
             "INSERT INTO users(name) VALUES ('ada');\n")
PYTEST = ["python3", "-m", "pytest", "-q", "/root/proj"]
MIGRATE = "sqlite3 /root/app.db < /root/m.sql && sqlite3 /root/app.db 'select count(*) from users'"


def iterations():
    for i in range(4):  # an agent iterating on a fix: the first tries fail, the last passes
        body = PASSING if i == 3 else FAILING
        yield "fix-bug", {"image": "base", "command": PYTEST,
                          "files": {"/root/proj/test_app.py": body}, "timeout_s": 120,
                          "limits": ["ci-db"]}
    for _ in range(3):  # a migration campaign: apply and check
        yield "migrate", {"image": "base", "command": ["sh", "-c", MIGRATE],
                          "files": {"/root/m.sql": MIGRATION}, "timeout_s": 60}
    yield "migrate", {"image": "base", "command": ["sh", "-c", "sleep 30"], "timeout_s": 3}
    for i in range(3):  # quick probes
        yield "probe", {"image": "base", "command": ["python3", "-c", f"print({i} ** 10)"],
                        "timeout_s": 60}


def main() -> None:
    by_suite: dict[str, list[str]] = {}
    for suite, it in iterations():
        by_suite.setdefault(suite, []).append(json.dumps(it))
    for suite, lines in by_suite.items():
        with open(f"{sys.argv[1]}.{suite}.jsonl", "w") as fh:
            fh.write("\n".join(lines) + "\n")
        print(f"{sys.argv[1]}.{suite}.jsonl")


if __name__ == "__main__":
    main()
