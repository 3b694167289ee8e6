"""A fixture for tests of log lines: tryfleet's lines logged meanwhile, as JsonFormatter
writes them."""

import io
import json
import logging

import pytest

from tryfleet import logs


@pytest.fixture
def lines():
    """tryfleet's lines logged meanwhile, as JsonFormatter writes them (role gateway, host
    h1)."""
    root = logging.getLogger()
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.addFilter(logging.Filter("tryfleet"))
    handler.setFormatter(logs.JsonFormatter("gateway", host="h1"))
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield lambda: buf.getvalue().splitlines()
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def parsed(lines):
    return [json.loads(line) for line in lines]
