"""The TOML files the settings name (``BIOX_REGISTRY``, ``BIOX_POLICY``,
``BIOX_AGREEMENT``, ``BIOX_STAFF``): the examples biox ships with, which are the settings'
defaults so that an installed ``biox`` works from any directory (``deploy/`` in a clone
links to them; ``biox init`` copies them to edit), and the one reader of such a file: a
file that is missing or unreadable is one line naming the file and its setting, never a
traceback (README, "Configuration")."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

NAMES = ("participants.toml", "policy.toml", "agreement.toml", "staff.toml")


def example(name: str) -> Path:
    """The shipped example ``name`` (one of ``NAMES``)."""
    return Path(str(resources.files(__package__) / name))


class ConfigError(ValueError):
    """A configuration file that cannot be used, said in one line naming its setting."""


def read_toml(path: Path, setting: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no file at {path} ({setting}): set {setting}, or `biox init` copies the examples"
        ) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path} ({setting}): {e}") from None
