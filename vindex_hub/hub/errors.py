"""The hub client's exceptions as the package's own: ``HubError`` / ``RemoteNotFoundError``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx2
from huggingface_hub import constants, get_token
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import HubError, RemoteNotFoundError
from ..safetext import header_safe, scrub_secret
from .refs import RepoRef

# The bundled server's ``Server`` header (``hubserver``'s ``server_version``): it accepts any token.
LOCAL_HUB_SERVER = "vindex-hub-local-hub"
LOCAL_HUB_TOKEN_HINT = (
    "the bundled local Hub accepts any token: set HF_TOKEN to any value (e.g. HF_TOKEN=local)"
)


def token_hint(exc: BaseException) -> str:
    """A hint for a 401 from the bundled local Hub, where a missing token is the only cause."""
    response = getattr(exc, "response", None)
    if (
        response is not None
        and response.status_code == 401
        and response.headers.get("server", "").startswith(LOCAL_HUB_SERVER)
    ):
        return f" ({LOCAL_HUB_TOKEN_HINT})"
    return ""


TOKEN_NOT_HEADER_SAFE = (
    "the Hub token (token=, HF_TOKEN or the saved login) holds characters an HTTP header cannot "
    "carry (non-ASCII, spaces or control characters); check it"
)


# What hf_xet raises into Python, unwrapped by huggingface_hub: ConnectionError (also for a
# refused token), PermissionError, FileNotFoundError, TimeoutError and other OSErrors,
# ValueError, RuntimeError.
XET_EXCEPTIONS = (OSError, ValueError, RuntimeError)


def xet_failure(exc: BaseException) -> bool:
    """Whether ``exc`` came out of the hub client's Xet path (an upload or download by hf_xet)."""
    if not isinstance(exc, XET_EXCEPTIONS):
        return False
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if "xet" in frame.f_code.co_name.lower() and str(
            frame.f_globals.get("__name__", "")
        ).startswith("huggingface_hub"):
            return True
        tb = tb.tb_next
    return False


def xet_message(where: str, exc: BaseException) -> str:
    """One line for a failed Xet transfer of ``where`` (a repo, or a file in one)."""
    return f"{where}: Xet transfer with {constants.ENDPOINT} failed ({type(exc).__name__}: {first_line(exc)})"


@contextlib.contextmanager
def hub_errors(
    ref: RepoRef, filename: str | None = None, *, token: str | bool | None = None
) -> Iterator[None]:
    """Turn the hub client's exceptions into ``HubError`` / ``RemoteNotFoundError`` naming what
    failed, with the token (``token``, else the client's own: ``HF_TOKEN`` or the saved login)
    scrubbed from the message as a whole token (``safetext.scrub_secret``)."""
    try:
        with _mapped(ref, filename):
            yield
    except HubError as exc:
        secrets = {t for t in (token if isinstance(token, str) else None, get_token()) if t}
        message = str(exc)
        for secret in secrets:
            message = scrub_secret(message, secret)
        if message != str(exc):
            raise type(exc)(message) from None
        raise


@contextlib.contextmanager
def _mapped(ref: RepoRef, filename: str | None) -> Iterator[None]:
    where = f"{filename} in {ref}" if filename else str(ref)
    try:
        yield
    except GatedRepoError as exc:
        raise HubError(
            f"{ref}: gated repo, access not granted (log in or request access): {first_line(exc)}"
        ) from None
    except RepositoryNotFoundError as exc:
        raise RemoteNotFoundError(
            f"{ref.repo_type} repo {ref.repo_id} not found at {constants.ENDPOINT} "
            "(check the id and repo_type; private repos need a token)" + token_hint(exc)
        ) from None
    except RevisionNotFoundError:
        raise RemoteNotFoundError(
            f"revision {ref.revision!r} not found in {ref.repo_type} repo {ref.repo_id}"
        ) from None
    except LocalEntryNotFoundError:
        raise HubError(
            f"{where}: not in the local cache and the Hub cannot be reached (offline?)"
        ) from None
    except EntryNotFoundError:
        raise RemoteNotFoundError(f"{where}: no such file") from None
    except OfflineModeIsEnabled:
        raise HubError(f"{where}: not in the local cache and HF_HUB_OFFLINE is set") from None
    except HfHubHTTPError as exc:
        raise HubError(f"{where}: {first_line(exc)}{token_hint(exc)}") from None
    except httpx2.UnsupportedProtocol:
        raise HubError(
            f"{where}: the Hub endpoint {constants.ENDPOINT!r} (HF_ENDPOINT) is not an http:// "
            "or https:// URL; fix HF_ENDPOINT"
        ) from None
    except httpx2.TransportError as exc:
        raise HubError(
            f"{where}: cannot reach {constants.ENDPOINT} ({type(exc).__name__}: {exc})"
        ) from None
    except UnicodeEncodeError as exc:
        # The client puts the token in a header: the encoding error would quote a character of it.
        if isinstance(exc.object, str) and exc.object.startswith("Bearer "):
            raise HubError(f"{where}: {TOKEN_NOT_HEADER_SAFE}") from None
        raise HubError(f"{where}: the Hub client cannot encode a request ({exc.reason})") from None
    except XET_EXCEPTIONS as exc:
        if xet_failure(exc):
            raise HubError(xet_message(where, exc)) from None
        if not isinstance(exc, ValueError):
            raise
        # The client refuses some repo contents itself: a file name with "..", a file it would
        # need hf_xet for (a size it cannot fetch over plain HTTP).
        raise HubError(f"{where}: the Hub client refuses it: {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    """An exception's message on one line (its first two non-empty lines), for error messages."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return " ".join(lines[:2]) if lines else type(exc).__name__


def check_token(token: str | bool | None) -> None:
    """``HubError`` (quoting none of it) when the token to send cannot travel in a header."""
    secret = token if isinstance(token, str) else (get_token() if token is not False else None)
    if secret and not header_safe(secret):
        raise HubError(TOKEN_NOT_HEADER_SAFE)
