"""Recipes: `images/recipes/<name>.toml`, loaded with tomllib and validated with clear errors."""

from __future__ import annotations

import posixpath
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RecipeError

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
SUITE_RE = re.compile(r"^[a-z][a-z0-9-]*$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
UID_RANGE = (1000, 59999)  # Debian's range for ordinary users
VARIANTS = ("minbase", "buildd")
MAX_HEADROOM_MIB = 1024 * 1024

REQUIRED = ("suite", "variant", "mirror", "packages", "kernel_package", "headroom_mib")
OPTIONAL = ("description", "warm", "users")
USER_KEYS = ("name", "uid", "home", "shell")


@dataclass(frozen=True, slots=True)
class User:
    """An account made in the image (its group of the same name and id, its home owned by
    it): commands that name it run as it."""

    name: str
    uid: int
    home: str
    shell: str


@dataclass(frozen=True, slots=True)
class Recipe:
    name: str
    path: Path
    description: str
    suite: str
    variant: str
    mirror: str
    packages: tuple[str, ...]
    kernel_package: str
    headroom_mib: int
    # Run once in a booted guest before it is saved for snapshot restores, so that restored
    # guests start with what it read in their page cache (e.g. importing pytest).
    warm: tuple[str, ...] = ()
    users: tuple[User, ...] = ()


def valid_name(name: str) -> bool:
    return bool(NAME_RE.match(name))


def recipe_names(recipes_dir: Path = RECIPES_DIR) -> list[str]:
    if not recipes_dir.is_dir():
        return []
    return sorted(p.stem for p in recipes_dir.glob("*.toml") if valid_name(p.stem))


def recipe_path(name: str, recipes_dir: Path = RECIPES_DIR) -> Path | None:
    """The recipe file of `name`, or None when there is none (or the name is not valid)."""
    if not valid_name(name):
        return None
    path = recipes_dir / f"{name}.toml"
    return path if path.is_file() else None


def load_recipe(path: Path) -> Recipe:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise RecipeError(path, f"cannot be read ({err.strerror or err})") from err
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise RecipeError(path, f"is not valid TOML ({err})") from err
    return parse_recipe(path, data)


def parse_recipe(path: Path, data: dict[str, Any]) -> Recipe:
    if not valid_name(path.stem):
        raise RecipeError(path, f"file name {path.stem!r} is not a valid image name "
                          "(lowercase letters, digits, '-' and '_')")
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise RecipeError(path, f"unknown key(s) {', '.join(map(repr, unknown))} "
                          f"(known: {', '.join(REQUIRED + OPTIONAL)})")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise RecipeError(path, f"missing required key(s) {', '.join(map(repr, missing))}")
    return Recipe(
        name=path.stem,
        path=path,
        description=_string(path, data, "description", default=""),
        suite=_matching(path, data, "suite", SUITE_RE, "a Debian suite name like 'bookworm'"),
        variant=_variant(path, data),
        mirror=_mirror(path, data),
        packages=_packages(path, data),
        kernel_package=_matching(path, data, "kernel_package", PACKAGE_RE, "a package name"),
        headroom_mib=_headroom(path, data),
        warm=_warm(path, data),
        users=_users(path, data),
    )


def _string(path: Path, data: dict[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise RecipeError(path, f"{key!r} must be a string, not {value!r}")
    return value


def _matching(path: Path, data: dict[str, Any], key: str, pattern: re.Pattern[str],
              what: str) -> str:
    value = _string(path, data, key)
    if not pattern.match(value):
        raise RecipeError(path, f"{key!r} must be {what}, not {value!r}")
    return value


def _variant(path: Path, data: dict[str, Any]) -> str:
    value = _string(path, data, "variant")
    if value not in VARIANTS:
        raise RecipeError(path, f"'variant' must be one of {', '.join(VARIANTS)}, not {value!r}")
    return value


def _mirror(path: Path, data: dict[str, Any]) -> str:
    value = _string(path, data, "mirror")
    if not re.match(r"^https?://[^\s/]+(/\S*)?$", value):
        raise RecipeError(path, f"'mirror' must be an http:// or https:// URL, not {value!r}")
    return value


def _packages(path: Path, data: dict[str, Any]) -> tuple[str, ...]:
    value = data["packages"]
    if not isinstance(value, list) or not value:
        raise RecipeError(path, "'packages' must be a non-empty list of package names")
    for item in value:
        if not isinstance(item, str) or not PACKAGE_RE.match(item):
            raise RecipeError(path, f"'packages' holds {item!r}, which is not a package name")
    if len(set(value)) != len(value):
        raise RecipeError(path, "'packages' lists a package twice")
    return tuple(value)


def _headroom(path: Path, data: dict[str, Any]) -> int:
    value = data["headroom_mib"]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_HEADROOM_MIB:
        raise RecipeError(path, f"'headroom_mib' must be an integer from 0 to {MAX_HEADROOM_MIB}, "
                          f"not {value!r}")
    return value


def _warm(path: Path, data: dict[str, Any]) -> tuple[str, ...]:
    value = data.get("warm", [])
    if not isinstance(value, list) or not all(isinstance(a, str) and a for a in value):
        raise RecipeError(path, "'warm' must be a command as a list of strings, like "
                          f"[\"python3\", \"-c\", \"import pytest\"], not {value!r}")
    return tuple(value)


def _users(path: Path, data: dict[str, Any]) -> tuple[User, ...]:
    value = data.get("users", [])
    if not isinstance(value, list):
        raise RecipeError(path, "'users' must be a list of tables like "
                          "{ name = \"user\", uid = 1000 }")
    users = tuple(_user(path, item) for item in value)
    for key in ("name", "uid"):
        seen = [getattr(u, key) for u in users]
        if len(set(seen)) != len(seen):
            raise RecipeError(path, f"'users' gives two users the same {key}")
    return users


def _user(path: Path, item: Any) -> User:
    if not isinstance(item, dict) or set(item) - set(USER_KEYS) or "name" not in item \
            or "uid" not in item:
        raise RecipeError(path, f"each of 'users' is a table of {', '.join(USER_KEYS)} (name "
                          f"and uid required), not {item!r}")
    name, uid = item["name"], item["uid"]
    if not isinstance(name, str) or not USER_RE.match(name) or name == "root":
        raise RecipeError(path, f"user name {name!r} must be lowercase letters, digits, '_' "
                          "and '-' (at most 32), and not root")
    if isinstance(uid, bool) or not isinstance(uid, int) or \
            not UID_RANGE[0] <= uid <= UID_RANGE[1]:
        raise RecipeError(path, f"uid of user {name!r} must be an integer from {UID_RANGE[0]} "
                          f"to {UID_RANGE[1]}, not {uid!r}")
    home, shell = item.get("home", f"/home/{name}"), item.get("shell", "/bin/bash")
    for key, value in (("home", home), ("shell", shell)):
        if not isinstance(value, str) or not value.startswith("/") or \
                posixpath.normpath(value) != value or value == "/":
            raise RecipeError(path, f"{key} of user {name!r} must be an absolute, normalised "
                              f"path, not {value!r}")
    return User(name, uid, home, shell)
