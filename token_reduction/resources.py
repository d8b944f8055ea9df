"""Files the package ships: training configs (``lightning_configs/``) and the default set's spec (``data/``).

In a source checkout (or an editable install) they are the repository's top-level folders; an
installed wheel carries them inside the package (``setup.py`` maps them there). Callers ask for a
resource by its path relative to the repository root and never care which of the two they got.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from token_reduction.errors import UserError

CHECKOUT = Path(__file__).resolve().parents[1]
CONFIG_FOLDER = "lightning_configs"


def resource_path(relative: str) -> Path:
    """The shipped file or folder ``relative`` (e.g. ``lightning_configs/demo.yaml``); may not exist."""
    top, _, rest = relative.partition("/")
    try:  # a data-only (namespace) package of the wheel: its one folder
        root = Path(next(iter(importlib.import_module(f"token_reduction.{top}").__path__)))
    except ModuleNotFoundError:  # a checkout: the folder sits beside the package
        root = CHECKOUT / top
    return root / rest if rest else root


def config_names() -> list[str]:
    """Every shipped config, by the name ``--config`` accepts (``demo``, ``trainer/multinode``, ...)."""
    folder = resource_path(CONFIG_FOLDER)
    return sorted(path.relative_to(folder).with_suffix("").as_posix() for path in folder.rglob("*.yaml"))


def find_config(name: str) -> Path:
    """``name`` as a path if that file exists, else a shipped config by name, with or without ``.yaml``.

    So ``--config demo``, ``--config demo.yaml``, ``--config lightning_configs/demo.yaml`` and
    ``--config trainer/multinode`` all work from any folder, checkout or installed wheel.
    """
    given = Path(name).expanduser()
    if given.is_file():
        return given
    stem = name[len(CONFIG_FOLDER) + 1 :] if name.startswith(CONFIG_FOLDER + "/") else name
    for candidate in (stem, f"{stem}.yaml"):
        shipped = resource_path(f"{CONFIG_FOLDER}/{candidate}")
        if shipped.is_file():
            return shipped
    raise UserError(name, "--config", f"no such file, and not a shipped config; use a YAML path or one of: {', '.join(config_names())}")
