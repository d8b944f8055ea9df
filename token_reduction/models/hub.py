"""Where a selector comes from: a local export folder or a Hugging Face Hub repo, and one-line errors.

:class:`~token_reduction.models.selector.TokenSelector` gets ``from_pretrained`` / ``push_to_hub``
from ``huggingface_hub``'s mixin; this module holds the small pieces around it: telling a local
path from a repo id (so a mistyped folder does not turn into a network call), fetching one file of
either kind, and turning the Hub's exceptions into :class:`~token_reduction.errors.UserError` lines
shaped ``<file>: <field>: <what to do>``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download
from huggingface_hub.utils import EntryNotFoundError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

from token_reduction.errors import UserError

EXPORT_HINT = "export one with `token-reduction export` (or train with `token-reduction fit`)"
# owner/name as the Hub spells it; anything else (a bare name, ./x, /x, a/b/c) is a local path
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# What fetching a repo file can raise: HTTP and connection errors are OSErrors in every release
HUB_ERRORS: tuple[type[BaseException], ...] = (OSError, EntryNotFoundError, HFValidationError)


class SelectorNotFoundError(UserError, FileNotFoundError):
    """No selector at that place: a missing folder, or a repo/file the Hub (or its cache) lacks.

    Also a ``FileNotFoundError``, so code that caught the old error keeps working.
    """


def is_local(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` names a local folder: an existing one, a ``Path``, or anything not shaped like a repo id."""
    if isinstance(spec, os.PathLike) or os.path.isdir(spec):
        return True
    text = str(spec)
    return os.path.exists(text) or REPO_ID.fullmatch(text) is None or text.endswith((".json", ".safetensors"))


def hub_location(repo_id: str, revision: str | None = None, filename: str | None = None) -> str:
    """``hf://owner/name@rev/file``: the Hub file system's spelling, used as the ``<file>`` of errors."""
    return f"hf://{repo_id}" + (f"@{revision}" if revision else "") + (f"/{filename}" if filename else "")


def location(model_id: str, revision: str | None, filename: str | None = None) -> str:
    """A local ``folder/file`` or the ``hf://`` spelling of a repo file, for messages."""
    if os.path.isdir(model_id):
        return str(Path(model_id) / filename) if filename else model_id
    return hub_location(model_id, revision, filename)


def fetch_file(model_id: str, filename: str, **hub: Any) -> str:
    """Path of ``filename`` in a local folder, or in the Hub cache (downloaded unless offline / cached).

    ``hub`` takes ``hf_hub_download``'s ``revision``, ``cache_dir``, ``force_download``,
    ``local_files_only`` and ``token``; errors come back as :class:`UserError` lines.
    """
    if os.path.isdir(model_id):
        path = Path(model_id) / filename
        if not path.is_file():
            raise SelectorNotFoundError(model_id, None, f"has no {filename}, so it is not an exported TokenSelector; {EXPORT_HINT}")
        return str(path)
    try:
        return hf_hub_download(repo_id=model_id, filename=filename, **hub)
    except HUB_ERRORS as err:
        raise hub_error(model_id, hub.get("revision"), err, filename) from err


def hub_error(repo_id: str, revision: str | None, err: BaseException, filename: str | None = None) -> UserError:
    """The Hub's exception as one actionable line (the original stays chained as ``__cause__``)."""
    from huggingface_hub.utils import RepositoryNotFoundError, RevisionNotFoundError

    where = hub_location(repo_id, revision, filename)
    if isinstance(err, HFValidationError):
        return SelectorNotFoundError(
            repo_id, None, f"neither a local folder nor a valid Hub repo id ({first_line(err)}); give an export folder or owner/name"
        )
    if isinstance(err, RepositoryNotFoundError):
        return SelectorNotFoundError(
            hub_location(repo_id), None,
            "no such local folder and no such Hub repo (or it is private: log in with `hf auth login` or pass token=...)",
        )
    if isinstance(err, RevisionNotFoundError):
        return SelectorNotFoundError(hub_location(repo_id, revision), "revision", f"{revision!r} does not exist; use a branch, tag or commit of the repo")
    if isinstance(err, LocalEntryNotFoundError):
        return SelectorNotFoundError(
            where, None,
            "not in the local Hugging Face cache and the Hub cannot be reached (offline mode or no network); "
            "download it once online, or pass cache_dir= where it is cached",
        )
    if isinstance(err, EntryNotFoundError):
        return SelectorNotFoundError(where, None, f"the repo has no such file, so it is not an exported TokenSelector; {EXPORT_HINT} and push it")
    if isinstance(err, HfHubHTTPError):
        return UserError(where, None, f"the Hub refused the download ({first_line(err)}); check the repo id, revision and token")
    return UserError(where, None, f"could not be fetched ({first_line(err)}); check the network, or set HF_HUB_OFFLINE=1 to use the cache")


def first_line(err: BaseException) -> str:
    """The first line of an exception's message: error lines stay one line long."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
