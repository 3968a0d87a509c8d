"""One source of run settings: `config/defaults.toml`.

Every run setting has exactly one line there, `name = default  # help`. This module loads that file once; the
run configuration (pipeline/config.py RunConfig) and the CLI's options and `--help` (pipeline/cli/run.py) read
their defaults from here, and the workers, front end and engines get the run's values through one WorkerConfig
built by RunConfig (workers/contracts.py), never a default of their own: a default changes in one place.
tests/test_settings.py checks that behaviour.

Other commands' settings are a table each in the same file (`[export]`: export's sanity filters), read with
`section(name)` / `section_helps(name)`; `defaults()` and `helps()` are the run's.
"""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from importlib import resources

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_LINE = re.compile(r'^(\w+)\s*=\s*(?:"[^"]*"|[^#\s]+)\s*#\s*(.*)$')
_HEADER = re.compile(r'^\[(\w+)\]\s*(?:#.*)?$')
SECTIONS = ("export",)  # tables of other commands' settings (not run settings)


def _text() -> str:
    return resources.files("transcribe_batch.config").joinpath("defaults.toml").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _all() -> dict:
    return tomllib.loads(_text())


@lru_cache(maxsize=1)
def defaults() -> dict:
    """Every run setting's default as written in defaults.toml ("" stands for none), [engine_options] included."""
    return {k: v for k, v in _all().items() if k not in SECTIONS}


def section(name: str) -> dict:
    """The defaults of another command's settings: the `[name]` table (KeyError for a table defaults.toml lacks)."""
    return dict(_all()[name])


@lru_cache(maxsize=None)
def _helps(table: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    last = None
    current = None  # the [table] the lines belong to (None: the top level)
    for line in _text().splitlines():
        header = _HEADER.match(line)
        if header:
            current, last = header.group(1), None
            continue
        m = _LINE.match(line)
        if m and current == table:
            last = m.group(1)
            out[last] = m.group(2).strip()
        elif last and line.startswith(" ") and line.strip().startswith("#"):
            out[last] += " " + line.strip().lstrip("#").strip()
        else:
            last = None
    return out


def helps() -> dict[str, str]:
    """Each run setting's help: the comment on its line (continuation comment lines below it are joined on)."""
    return _helps(None)


def section_helps(name: str) -> dict[str, str]:
    """Each setting's help in the `[name]` table, as `helps()`."""
    return _helps(name)


def default(name: str):
    """The default of one setting (KeyError for a name defaults.toml does not have)."""
    return defaults()[name]
