import socket
import threading

import pytest

from tryfleet.images.guestagent.agent import Agent
from tryfleet.nodeagent.guest import GuestChannel
from tryfleet.scheduler.ledger import Ledger
from tryfleet.scheduler.records import Iteration

from .builders import IDS_40000


class AgentPair:
    """The real guest agent in a thread, on one end of a socketpair; the host channel on the
    other."""

    def __init__(self, root):
        self.host, self.guest = socket.socketpair()
        (root / "root").mkdir(exist_ok=True)
        self.root = root
        self.agent = Agent(self.guest.fileno(), pid1=False, use_signals=False, exit_on_eof=True,
                           fs_root=str(root))
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()
        self.channel = GuestChannel(self.host)

    def close(self):
        self.channel.close()
        self.thread.join(timeout=5)
        self.guest.close()


@pytest.fixture
def agent_pair(tmp_path):
    pair = AgentPair(tmp_path)
    yield pair
    pair.close()


@pytest.fixture(scope="session")
def queued_40000(tmp_path_factory):
    """A ledger file with IDS_40000 queued in suite "s" (made once: copy it before writing)."""
    path = tmp_path_factory.mktemp("ledger") / "ledger.db"
    ledger = Ledger(path)
    ledger.submit([Iteration("base", ("true",), id=i) for i in IDS_40000], "s", "t")
    ledger.close()
    return path
