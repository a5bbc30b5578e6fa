"""Sending files to a DICOMweb server (STOW-RS), with the ``dicomweb-client`` library.

:func:`stow_files` posts the files of one outbox pass in one multipart request to
``<url>/studies`` and returns one :class:`~dicom_bridge.sender.SendResult` per file, as
the C-STORE sender does: a file is stored when the response's ReferencedSOPSequence
lists its SOP Instance UID and its FailedSOPSequence does not. A connection failure, a
timeout or an HTTP error fails every file of the request (the outbox retries them); an
HTTP 401/403 says that the credentials were refused. Credentials are read from their
files when a request is made (so they can be rotated without a restart) and never
appear in a message or a log.

:func:`check_endpoint` is the DICOMweb "echo": one QIDO-RS query for at most one study.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicom_bridge.errors import SendError
from dicom_bridge.sender import SendResult


class WebAuth(StrEnum):
    """How a DICOMweb destination authenticates."""

    NONE = "none"
    BASIC = "basic"  # username and the password in a file
    BEARER = "bearer"  # a token in a file (OAuth 2 access token, API key)


@dataclass(frozen=True, slots=True)
class WebEndpoint:
    """A DICOMweb service: its base URL (``http(s)://host[:port]/path``, no credentials
    in it), how to authenticate, the CA bundle that verifies an HTTPS server (None: the
    system's) and the timeout of one request."""

    url: str
    auth: WebAuth = WebAuth.NONE
    username: str | None = None
    password_file: Path | None = field(default=None, repr=False)
    token_file: Path | None = field(default=None, repr=False)
    ca_file: Path | None = None
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SendError("a DICOMweb URL must be http(s)://host[:port][/path]")
        if parts.username or parts.password:
            raise SendError("a DICOMweb URL must not hold credentials; use auth")
        object.__setattr__(self, "auth", WebAuth(self.auth))
        if self.auth is WebAuth.BASIC and (not self.username or self.password_file is None):
            raise SendError("basic auth needs a username and a password file")
        if self.auth is WebAuth.BEARER and self.token_file is None:
            raise SendError("bearer auth needs a token file")

    @property
    def peer(self) -> str:
        """The URL as the outbox records it."""
        return self.url.rstrip("/")

    def session(self) -> requests.Session:
        """A requests session with the credentials and the CA bundle (``ca_file`` wins
        over ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` in the environment; without it,
        those or the system's CAs verify the server)."""
        session = _Session(None if self.ca_file is None else str(self.ca_file))
        if self.auth is WebAuth.BASIC:
            assert self.username is not None and self.password_file is not None
            session.auth = (self.username, _secret(self.password_file, "password"))
        elif self.auth is WebAuth.BEARER:
            assert self.token_file is not None
            session.headers["Authorization"] = f"Bearer {_secret(self.token_file, 'token')}"
        return session

    def client(self) -> DICOMwebClient:
        timeout = (min(10.0, self.timeout_s), self.timeout_s)  # (connect, read)
        client = DICOMwebClient(url=self.peer, session=self.session(), timeout=timeout)
        client.set_http_retry_params(retry=False)  # the outbox retries, with its backoff
        return client


class _Session(requests.Session):
    """A session whose CA bundle, when given, is not replaced by the environment's
    (requests lets ``REQUESTS_CA_BUNDLE`` override ``Session.verify``)."""

    def __init__(self, ca_bundle: str | None) -> None:
        super().__init__()
        self._ca_bundle = ca_bundle

    def merge_environment_settings(  # type: ignore[no-untyped-def]
        self, url, proxies, stream, verify, cert
    ):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if self._ca_bundle is not None:
            settings["verify"] = self._ca_bundle
        return settings


def _secret(path: Path, what: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SendError(f"cannot read the DICOMweb {what} file: {exc.strerror}") from exc
    if not value:
        raise SendError(f"the DICOMweb {what} file is empty")
    return value


def _http_error(exc: requests.RequestException) -> SendError:
    response = getattr(exc, "response", None)
    if response is not None:
        code = int(response.status_code)
        hint = " (credentials refused)" if code in (401, 403) else ""
        return SendError(f"DICOMweb server answered HTTP {code}{hint}")
    if isinstance(exc, requests.Timeout):
        return SendError("DICOMweb request timed out")
    return SendError(f"DICOMweb server unreachable: {type(exc).__name__}")


def stow_files(endpoint: WebEndpoint, paths: Sequence[Path]) -> list[SendResult]:
    """STOW-RS ``paths`` to ``endpoint`` in one request; one result per path, in order.
    Raises :class:`SendError` when nothing could be sent (connection, HTTP error,
    credentials); a file that is not DICOM fails on its own."""
    results: list[SendResult | None] = [None] * len(paths)
    datasets, uids, order = [], [], []
    for index, path in enumerate(paths):
        try:
            ds = dcmread(path)
            uid = str(ds.SOPInstanceUID)
        except (InvalidDicomError, OSError, AttributeError) as exc:
            results[index] = SendResult(path, "", None, False, f"not a DICOM file: {exc}")
            continue
        datasets.append(ds)
        uids.append(uid)
        order.append(index)
    if datasets:
        try:
            answer = endpoint.client().store_instances(datasets)
        except requests.RequestException as exc:
            raise _http_error(exc) from exc
        stored = {str(i.ReferencedSOPInstanceUID) for i in answer.get("ReferencedSOPSequence", [])}
        failed = {
            str(i.ReferencedSOPInstanceUID): int(i.get("FailureReason", 0) or 0)
            for i in answer.get("FailedSOPSequence", [])
        }
        for index, uid in zip(order, uids, strict=True):
            ok = uid in stored and uid not in failed
            error = None
            if not ok:
                reason = failed.get(uid)
                error = (
                    f"DICOMweb server refused it (FailureReason 0x{reason:04X})"
                    if reason
                    else "DICOMweb server did not list it as stored"
                )
            results[index] = SendResult(paths[index], uid, failed.get(uid, 0), ok, error)
    return [r for r in results if r is not None]


def check_endpoint(endpoint: WebEndpoint) -> None:
    """One QIDO-RS query (at most one study); raises :class:`SendError` when the service
    does not answer it."""
    try:
        endpoint.client().search_for_studies(limit=1)
    except requests.RequestException as exc:
        raise _http_error(exc) from exc
