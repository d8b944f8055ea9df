"""Metadata lives in setup.cfg; this file maps the top-level resource folders into the package.

``lightning_configs/`` and ``data/`` stay at the repository's top level (where users look for them),
and the wheel carries them as ``token_reduction/lightning_configs`` and ``token_reduction/data`` so an
installed package finds its configs and the default set's spec (see ``token_reduction.resources``).
"""

from pathlib import Path

from setuptools import find_packages, setup

# folder -> (file patterns carried, whether its sub-folders are carried too); data/default/ is built, not shipped
RESOURCE_FOLDERS = {"lightning_configs": (("*.yaml",), True), "data": (("default_set.json", "README.md"), False)}


def resource_packages() -> dict[str, str]:
    """``token_reduction.<folder>[.<sub>]`` -> its folder, for every folder that holds resources."""
    mapping = {}
    for top, (patterns, recursive) in RESOURCE_FOLDERS.items():
        for folder in sorted([Path(top), *(Path(top).rglob("*") if recursive else ())]):
            if folder.is_dir() and any(any(folder.glob(p)) for p in patterns):
                mapping["token_reduction." + ".".join(folder.parts)] = folder.as_posix()
    return mapping


MAPPED = resource_packages()
setup(
    packages=find_packages(include=["token_reduction", "token_reduction.*"]) + list(MAPPED),
    package_dir=MAPPED,
    package_data={name: list(RESOURCE_FOLDERS[name.split(".")[1]][0]) for name in MAPPED},
    exclude_package_data={name: ["*.py"] for name in MAPPED},
)
