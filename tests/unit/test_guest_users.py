"""Commands run as the user the request names: the account from the guest's own /etc/passwd
and /etc/group, its environment and home; root's defaults when none is named."""

import pytest

from tryfleet.errors import BadRequest
from tryfleet.images.guestagent import spawn
from tryfleet.images.guestagent.fsops import RequestError
from tryfleet.nodeagent.errors import GuestRequestError, UnknownUser

PASSWD = ("root:x:0:0:root:/root:/bin/bash\n"
          "# a comment\n"
          "broken:x:notanumber:0::/nowhere:/bin/sh\n"
          "user:x:1000:1000::/home/user:/bin/bash\n")
GROUP = "root:x:0:\nuser:x:1000:\naudio:x:29:user,other\nvideo:x:44:other\n"


@pytest.fixture
def root(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(PASSWD)
    (tmp_path / "etc/group").write_text(GROUP)
    (tmp_path / "home/user").mkdir(parents=True)
    (tmp_path / "root").mkdir(exist_ok=True)
    return tmp_path


def test_an_account_is_read_with_its_groups(root):
    assert spawn.lookup(str(root), "user") == spawn.Account(
        "user", 1000, 1000, (29, 1000), "/home/user", "/bin/bash")


@pytest.mark.parametrize("name", ["nobody", "broken", "us"])
def test_a_user_the_sandbox_lacks_is_an_error_with_its_code(root, name):
    with pytest.raises(RequestError, match=f"no user '{name}'") as err:
        spawn.lookup(str(root), name)
    assert err.value.code == "unknown_user"


def test_the_child_takes_the_users_ids_only_where_the_agent_may_switch():
    acct = spawn.Account("user", 1000, 1000, (29, 1000), "/home/user", "/bin/bash")
    spec = spawn.Spec(["id"], {}, "/home/user", None, False, None, 1, acct)
    assert spawn.identity(spec, True) == {"user": 1000, "group": 1000, "extra_groups": [29, 1000]}
    assert spawn.identity(spec, False) == {}
    assert spawn.identity(spec._replace(account=None), True) == {}


def test_a_command_as_user_gets_its_environment_and_home(agent_pair, root):
    r = agent_pair.channel.exec(["sh", "-c", "echo $HOME $USER $LOGNAME $SHELL; pwd"],
                                user="user")
    assert r.stdout == f"/home/user user user /bin/bash\n{root}/home/user\n".encode()


def test_the_request_environment_and_cwd_win_over_the_users(agent_pair, root):
    r = agent_pair.channel.exec(["sh", "-c", "echo $HOME; pwd"], user="user",
                                env={"HOME": "/elsewhere"}, cwd="/root")
    assert r.stdout == f"/elsewhere\n{root}/root\n".encode()


def test_root_named_is_root_and_none_named_is_todays_default(agent_pair, root):
    named = agent_pair.channel.exec(["sh", "-c", "echo $HOME $USER; pwd"], user="root")
    assert named.stdout == f"/root root\n{root}/root\n".encode()
    unnamed = agent_pair.channel.exec(["sh", "-c", "echo $HOME ${USER-unset}; pwd"])
    assert unnamed.stdout == f"/root unset\n{root}/root\n".encode()


def test_an_unknown_user_is_the_callers_error(agent_pair, root):
    with pytest.raises(UnknownUser, match="no user 'ghost'") as err:
        agent_pair.channel.exec(["true"], user="ghost")
    assert isinstance(err.value, BadRequest) and isinstance(err.value, GuestRequestError)
    assert agent_pair.channel.exec(["true"]).exit_code == 0
