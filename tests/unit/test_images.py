"""images/: recipes, digests, the store and its completeness rules, build helpers, the CLI.

The cpio writer and the initramfs are tested in test_images_boot.py.
"""

import json
import os
import re
import stat
import subprocess

import pytest

from tryfleet import images
from tryfleet.images import cli
from tryfleet.images.builder import fs_size_mib, guest_path, shrink, usage_bytes
from tryfleet.images.digest import compute_digest
from tryfleet.images.errors import BuildError, ImageError, ImageNotBuilt, RecipeError, UnknownImage
from tryfleet.images.kernel import Apt
from tryfleet.images.recipe import RECIPES_DIR, User, load_recipe
from tryfleet.images.steps import run
from tryfleet.images.store import ImageStore

GOOD_RECIPE = """\
suite = "bookworm"
variant = "minbase"
mirror = "http://deb.debian.org/debian"
packages = ["python3", "git"]
kernel_package = "linux-image-cloud-amd64"
headroom_mib = 256
"""
RELEASE = "6.1.0-99-cloud-amd64"
USERS = """\
users = [{ name = "dev", uid = 1000 },
         { name = "ci", uid = 1001, home = "/srv/ci", shell = "/bin/sh" }]
"""


def write_recipe(folder, name="base", text=GOOD_RECIPE):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def digest_inputs(tmp_path):
    """A recipe, a guest agent dir and a boot dir in tmp_path, as compute_digest's inputs."""
    recipe = write_recipe(tmp_path / "recipes")
    agent, boot = tmp_path / "guestagent", tmp_path / "boot"
    agent.mkdir()
    boot.mkdir()
    (agent / "agent.py").write_text("print('agent')\n")
    (agent / "wire.py").write_text("PORT = 1\n")
    (boot / "tryfleet-init").write_text("#!/bin/sh\n")
    return recipe, agent, boot


def digest_of(recipe, agent, boot, kernel="linux-image-6.1.0-99-cloud-amd64=6.1.1-1", **kw):
    return compute_digest(recipe, kernel, guestagent_dir=agent, boot_dir=boot, **kw)


def make_build(data_dir, name="base", digest="a" * 64, built_at="2026-01-01T00:00:00Z",
               manifest=True, folder_name=None):
    folder = data_dir / "images" / name / (folder_name or digest)
    folder.mkdir(parents=True)
    for f in ("rootfs.qcow2", "vmlinuz", "initrd.img"):
        (folder / f).write_bytes(b"x" * 5000)
    if manifest:
        (folder / "manifest.json").write_text(json.dumps({
            "name": name, "digest": digest, "disk_mib": 900, "built_at": built_at,
            "kernel_version": RELEASE}))
    return folder


@pytest.fixture
def store(tmp_path):
    write_recipe(tmp_path / "recipes", "base")
    write_recipe(tmp_path / "recipes", "heavy")
    return ImageStore(tmp_path / "data", recipes_dir=tmp_path / "recipes")


# --- recipes ---------------------------------------------------------------------------------

def test_the_shipped_base_recipe_is_valid():
    recipe = load_recipe(RECIPES_DIR / "base.toml")
    assert recipe.name == "base" and recipe.variant == "minbase" and recipe.suite == "bookworm"
    wanted = {"python3", "python3-pytest", "python3-msgpack", "git", "sqlite3"}
    assert wanted <= set(recipe.packages)
    assert recipe.kernel_package == "linux-image-cloud-amd64" and recipe.headroom_mib > 0
    assert recipe.warm[:2] == ("python3", "-c") and "pytest" in recipe.warm[2]
    # E2B's conventions: bash runs every command, as the user `user` by default
    assert "bash" in recipe.packages
    assert recipe.users == (User("user", 1000, "/home/user", "/bin/bash"),)


def test_a_user_gets_a_home_and_bash_unless_the_recipe_says_otherwise(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, text=GOOD_RECIPE + USERS))
    assert recipe.users == (User("dev", 1000, "/home/dev", "/bin/bash"),
                            User("ci", 1001, "/srv/ci", "/bin/sh"))


@pytest.mark.parametrize("text, problem", [
    (GOOD_RECIPE + 'colour = "blue"\n', "unknown key(s) 'colour'"),
    (GOOD_RECIPE.replace('suite = "bookworm"\n', ""), "missing required key(s) 'suite'"),
    (GOOD_RECIPE.replace("256", "true"), "'headroom_mib' must be an integer"),
    (GOOD_RECIPE.replace("256", "-1"), "'headroom_mib' must be an integer"),
    (GOOD_RECIPE.replace('["python3", "git"]', '"python3"'), "'packages' must be a non-empty"),
    (GOOD_RECIPE.replace('"git"', '"Bad Name"'), "'Bad Name', which is not a package name"),
    (GOOD_RECIPE.replace('"git"', '"python3"'), "lists a package twice"),
    (GOOD_RECIPE.replace('"minbase"', '"fakechroot"'), "'variant' must be one of"),
    (GOOD_RECIPE.replace("http://deb.debian.org/debian", "ftp://x"), "'mirror' must be"),
    ("suite = [unclosed", "is not valid TOML"),
    (GOOD_RECIPE + 'warm = "python3 -c pass"\n', "'warm' must be a command as a list"),
    (GOOD_RECIPE + 'warm = ["python3", ""]\n', "'warm' must be a command as a list"),
    (GOOD_RECIPE + 'users = "user"\n', "'users' must be a list of tables"),
    (GOOD_RECIPE + 'users = [{ name = "root", uid = 1000 }]\n', "and not root"),
    (GOOD_RECIPE + 'users = [{ name = "Bad", uid = 1000 }]\n', "user name 'Bad'"),
    (GOOD_RECIPE + 'users = [{ name = "u", uid = 0 }]\n', "uid of user 'u' must be"),
    (GOOD_RECIPE + 'users = [{ name = "u" }]\n', "name and uid required"),
    (GOOD_RECIPE + 'users = [{ name = "u", uid = 1000, colour = 1 }]\n', "name and uid"),
    (GOOD_RECIPE + 'users = [{ name = "u", uid = 1000, home = "rel" }]\n', "home of user"),
    (GOOD_RECIPE + 'users = [{ name = "u", uid = 1000, shell = "/bin/../sh" }]\n',
     "shell of user"),
    (GOOD_RECIPE + USERS.replace("1001", "1000"), "two users the same uid"),
])
def test_recipe_errors_name_the_file_and_the_problem(tmp_path, text, problem):
    path = write_recipe(tmp_path, text=text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(path) in str(err.value) and problem in str(err.value)
    assert isinstance(err.value, ImageError) and isinstance(err.value, ValueError)


def test_recipe_file_name_must_be_an_image_name(tmp_path):
    with pytest.raises(RecipeError, match="not a valid image name"):
        load_recipe(write_recipe(tmp_path, name="Has Space"))


# --- digest ----------------------------------------------------------------------------------

def test_digest_is_of_the_contents_not_of_where_or_when_the_files_are(tmp_path):
    first = digest_of(*digest_inputs(tmp_path / "one"))
    assert re.fullmatch("[0-9a-f]{64}", first)
    again = digest_inputs(tmp_path / "two")  # the same contents, elsewhere, made later
    os.utime(again[0], (1, 1))
    assert digest_of(*again) == first


@pytest.mark.parametrize("change", ["agent", "new agent file", "recipe", "boot"])
def test_digest_changes_with_every_input_file(tmp_path, change):
    recipe, agent, boot = digest_inputs(tmp_path)
    before = digest_of(recipe, agent, boot)
    target = {"agent": agent / "agent.py", "new agent file": agent / "extra.py",
              "recipe": recipe, "boot": boot / "tryfleet-init"}[change]
    target.write_text(target.read_text() + "# changed\n" if target.exists() else "x = 1\n")
    assert digest_of(recipe, agent, boot) != before


def test_digest_changes_with_kernel_and_builder_version(tmp_path):
    inputs = digest_inputs(tmp_path)
    base = digest_of(*inputs)
    assert digest_of(*inputs, kernel="linux-image-6.1.0-99-cloud-amd64=6.1.1-2") != base
    assert digest_of(*inputs, builder_version="999") != base


def test_digest_ignores_non_python_files_in_the_agent_dir(tmp_path):
    recipe, agent, boot = digest_inputs(tmp_path)
    before = digest_of(recipe, agent, boot)
    (agent / "__pycache__").mkdir()
    (agent / "notes.txt").write_text("not shipped")
    assert digest_of(recipe, agent, boot) == before


def test_digest_frames_inputs_so_bytes_cannot_move_between_files(tmp_path):
    recipe, agent, boot = digest_inputs(tmp_path)
    (agent / "agent.py").write_text("ab")
    (agent / "wire.py").write_text("c")
    before = digest_of(recipe, agent, boot)
    (agent / "agent.py").write_text("a")
    (agent / "wire.py").write_text("bc")
    assert digest_of(recipe, agent, boot) != before


# --- store -------------------------------------------------------------------------------------

def test_get_returns_the_newest_complete_build(store):
    make_build(store.data_dir, digest="a" * 64, built_at="2026-01-01T00:00:00Z")
    make_build(store.data_dir, digest="b" * 64, built_at="2026-02-01T00:00:00Z")
    image = store.get("base")
    assert image.digest == "b" * 64 and image.kernel_version == RELEASE and image.disk_mib == 900
    assert image.rootfs.name == "rootfs.qcow2" and image.path == image.rootfs.parent
    assert image.size_bytes >= 3 * 5000
    assert [i.digest for i in store.list()] == ["b" * 64]
    assert len(store.builds("base")) == 2


def test_the_build_made_current_wins_over_a_newer_one(store):
    # as after going back to an older recipe: its build is found up to date and made current
    make_build(store.data_dir, digest="a" * 64, built_at="2026-01-01T00:00:00Z")
    make_build(store.data_dir, digest="b" * 64, built_at="2026-02-01T00:00:00Z")
    store.make_current("base", "a" * 64)
    assert store.get("base").digest == "a" * 64
    assert [i.digest for i in store.list()] == ["a" * 64]
    store.make_current("base", "c" * 64)  # gone (or never complete): the newest again
    assert store.get("base").digest == "b" * 64


def test_a_build_without_manifest_or_under_a_tmp_name_is_not_complete(store):
    make_build(store.data_dir, digest="a" * 64, manifest=False)
    make_build(store.data_dir, digest="c" * 64, folder_name=f"{'c' * 64}.tmp-{os.getpid()}")
    with pytest.raises(ImageNotBuilt) as err:
        store.get("base")
    assert "run `tryfleet image build base`" in str(err.value)
    assert isinstance(err.value, FileNotFoundError) and store.list() == []


def test_a_build_missing_a_file_is_not_complete(store):
    (make_build(store.data_dir) / "initrd.img").unlink()
    assert store.builds("base") == []


def test_unknown_image_lists_the_recipes(store):
    with pytest.raises(UnknownImage) as err:
        store.get("nope")
    assert "known recipes: base, heavy" in str(err.value) and isinstance(err.value, LookupError)
    for bad in ("../base", "", "Base"):
        with pytest.raises(UnknownImage):
            store.get(bad)


def test_a_build_without_recipe_is_still_found(store):
    make_build(store.data_dir, name="retired")
    assert store.get("retired").name == "retired"


def test_clean_stale_removes_dead_builds_only(store):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = make_build(store.data_dir, folder_name=f"{'d' * 64}.tmp-{dead.pid}")
    ours = make_build(store.data_dir, folder_name=f"{'e' * 64}.tmp-{os.getpid()}")
    work = store.tmp_dir / f"build-base-{dead.pid}"
    work.mkdir(parents=True)
    assert set(store.clean_stale()) == {stale, work}
    assert ours.exists() and not stale.exists() and not work.exists()


def test_commit_makes_the_build_complete_readable_by_qemu_and_unlisted(store):
    staging = store.staging_dir("base", "f" * 64)
    for f in ("rootfs.qcow2", "vmlinuz", "initrd.img"):
        (staging / f).write_bytes(b"data")
    (staging / "manifest.json").write_text(json.dumps(
        {"disk_mib": 1, "built_at": "2026-01-01T00:00:00Z", "kernel_version": RELEASE}))
    (staging / "vmlinuz").chmod(0o600)
    image = store.commit(staging, "base", "f" * 64, replace=False)
    assert not staging.exists() and image.path.name == "f" * 64
    assert stat.S_IMODE(image.kernel.stat().st_mode) == 0o644
    assert stat.S_IMODE(image.path.stat().st_mode) == 0o711  # passed through, never listed


def test_workspace_is_removed_even_on_failure(store):
    with pytest.raises(RuntimeError), store.workspace("base") as work:
        (work / "rootfs" / "etc").mkdir(parents=True)
        raise RuntimeError("step failed")
    assert list(store.tmp_dir.iterdir()) == []


# --- builder helpers, apt, steps, errors ------------------------------------------------------

def test_guest_path_follows_symlinks_inside_the_rootfs(tmp_path):
    root = tmp_path / "rootfs"
    (root / "usr" / "sbin").mkdir(parents=True)
    (root / "sbin").symlink_to("usr/sbin")
    (root / "etc").mkdir()
    (root / "etc" / "hostname").symlink_to("/usr/sbin/hn")  # absolute: rebased on the rootfs
    assert guest_path(root, "/sbin/tryfleet-init") == root / "usr" / "sbin" / "tryfleet-init"
    assert guest_path(root, "/etc/hostname") == root / "usr" / "sbin" / "hn"
    (root / "escape").symlink_to("../..")
    with pytest.raises(BuildError, match="leads out of the rootfs"):
        guest_path(root, "/escape/x")


def test_shrink_removes_docs_but_keeps_locale_alias(tmp_path):
    for rel in ("usr/share/doc/git/copyright", "usr/share/locale/de/LC_MESSAGES/x.mo",
                "usr/share/locale/locale.alias", "usr/bin/python3"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    shrink(tmp_path)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["usr/bin/python3", "usr/share/locale/locale.alias"]


def test_filesystem_size_leaves_the_headroom(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 5000)
    assert usage_bytes(tmp_path) == 4096 + 8192
    # files and headroom, plus 4% for ext4's inode tables and bitmaps, plus 64 MiB of journal:
    # ceil((230 + 512) * 1.04) + 64 = 772 + 64
    assert fs_size_mib(230, 512) == 836


class FakeApt:
    """Answers apt commands from a table; lists are missing until `apt-get update` ran."""

    def __init__(self):
        self.calls = []
        self.updated = False

    def __call__(self, step, argv, **kw):
        self.calls.append(argv[:2])
        if argv[:2] == ["apt-get", "update"]:
            self.updated = True
            out = ""
        elif not self.updated:
            raise BuildError(step, "exited with 100", "E: No packages found")
        elif argv[1] == "depends":
            out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n"
        else:
            out = "linux-image-6.1.0-56-cloud-amd64:\n  Candidate: 6.1.192-2\n"
        return subprocess.CompletedProcess(argv, 0, out, "")


def test_apt_resolves_the_metapackage_updating_once():
    fake = FakeApt()
    kernel = Apt(runner=fake).resolve("linux-image-cloud-amd64")
    assert kernel.spec == "linux-image-6.1.0-56-cloud-amd64=6.1.192-2"
    assert kernel.release == "6.1.0-56-cloud-amd64"
    assert fake.calls.count(["apt-get", "update"]) == 1


def test_run_failure_names_the_step_and_ends_with_stderr():
    with pytest.raises(BuildError) as err:
        run("filesystem", ["sh", "-c", "for i in $(seq 40); do echo line$i >&2; done; exit 3"])
    text = str(err.value)
    assert "build step 'filesystem' failed" in text and "exited with 3" in text
    assert "line40" in text and "line1\n" not in text  # the tail only
    with pytest.raises(BuildError, match="no-such-tool-xyz not found"):
        run("kernel", ["no-such-tool-xyz"])


def test_public_api_is_pinned():
    assert set(images.__all__) == {
        "BUILDER_VERSION", "BuildError", "BuiltImage", "ImageError", "ImageNotBuilt",
        "ImageStore", "Recipe", "RecipeError", "UnknownImage", "build", "load_recipe"}
    assert all(hasattr(images, name) for name in images.__all__)


# --- CLI ----------------------------------------------------------------------------------------

def test_cmd_ls_prints_a_table_and_json(tmp_path, capsys):
    make_build(tmp_path, digest="ab" * 32)
    assert cli.cmd_ls(tmp_path, as_json=False) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "DIGEST", "SIZE", "BUILT"]
    assert lines[1].split()[:2] == ["base", "ab" * 6] and "2026-01-01 00:00Z" in lines[1]
    assert cli.cmd_ls(tmp_path, as_json=True) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["digest"] == "ab" * 32 and record["rootfs"].endswith("rootfs.qcow2")


def test_cmd_ls_with_nothing_built_says_what_to_do(tmp_path, capsys):
    assert cli.cmd_ls(tmp_path, as_json=False) == 0
    assert "tryfleet image build base" in capsys.readouterr().err


def test_cmd_build_of_an_unknown_image_fails_with_one_line(tmp_path, capsys):
    assert cli.cmd_build("no-such-image", tmp_path, force=False) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown image 'no-such-image'" in err and "base" in err


def test_human_bytes():
    assert [cli.human_bytes(n) for n in (5, 2048, 236 * 1024 * 1024, 3 << 30)] == \
        ["5 B", "2 KiB", "236.0 MiB", "3.0 GiB"]


def test_a_build_reached_through_a_symlink_names_its_files_by_their_real_place(tmp_path):
    from tests.unit.builders import make_image

    real = make_image(tmp_path / "shared", "base")
    own = tmp_path / "own" / "images" / "base"
    own.mkdir(parents=True)
    (own / real.name).symlink_to(real)  # as a test's data dir pins a build of the shared one
    built = ImageStore(tmp_path / "own").find("base", real.name)
    assert built.digest == real.name and built.rootfs == real.resolve() / "rootfs.qcow2"
