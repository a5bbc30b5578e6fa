"""``appliance healthcheck``: is this appliance healthy?

Meant for a container HEALTHCHECK: exit 0 when healthy, 1 otherwise (2: bad config).
With ``http.enabled`` it asks the service's ``/healthz`` (listener, worker, database,
disk, models; the failing checks are printed). Without it, or with ``--dicom``, the
listener on the configured port must accept an association and answer C-ECHO.
The calling AE title is ``--calling-ae``, else the first ``allowed_callers`` entry that
may call from loopback, else the appliance's own AE title (any caller is allowed when
``allowed_callers`` is empty).
"""

from __future__ import annotations

import time
from typing import Annotated

import typer

from appliance.cli.common import ConfigOption, load

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def healthcheck(
    config: ConfigOption = None,
    host: Annotated[
        str | None, typer.Option(help="Address to call (default: loopback, or the bind address).")
    ] = None,
    calling_ae: Annotated[
        str | None, typer.Option("--calling-ae", help="Calling AE title for the C-ECHO.")
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.5, max=120.0, help="Seconds to wait for the answer.")
    ] = 5.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
    dicom_only: Annotated[
        bool, typer.Option("--dicom", help="C-ECHO the listener even when /healthz is on.")
    ] = False,
) -> None:
    """Ask /healthz (http.enabled) or C-ECHO the listener; exit 0 when healthy."""
    cfg = load(config, audit=False)  # runs every 30 s under Docker: not an admin action
    if cfg.http.enabled and not dicom_only:
        _http(cfg.http.bind, cfg.http.port, host, timeout, quiet)
        return
    from dicom_bridge.errors import DicomBridgeError
    from dicom_bridge.sender import RemoteNode, TlsClientSettings
    from dicom_bridge.sender import echo as c_echo

    dicom = cfg.dicom
    target = host or (dicom.bind if dicom.bind not in ("0.0.0.0", "::", "") else "127.0.0.1")
    caller = calling_ae
    if caller is None:
        allowed = [c for c in dicom.allowed_callers if c.host is None or c.host in _LOOPBACK]
        caller = allowed[0].ae_title if allowed else dicom.ae_title
    tls = None
    if dicom.tls is not None:
        tls = TlsClientSettings(
            ca_file=dicom.tls.ca_file or dicom.tls.cert_file,
            cert_file=dicom.tls.cert_file if dicom.tls.require_client_cert else None,
            key_file=dicom.tls.key_file if dicom.tls.require_client_cert else None,
        )
    start = time.perf_counter()
    try:
        node = RemoteNode(
            ae_title=dicom.ae_title,
            host=target,
            port=dicom.port,
            calling_ae=caller,
            timeout_s=timeout,
            tls=tls,
        )
        c_echo(node)
    except (DicomBridgeError, ValueError, OSError) as exc:
        typer.echo(f"unhealthy: C-ECHO {dicom.ae_title}@{target}:{dicom.port}: {exc}", err=True)
        raise typer.Exit(1) from exc
    if not quiet:
        typer.echo(
            f"healthy: C-ECHO {dicom.ae_title}@{target}:{dicom.port} ok "
            f"in {1000 * (time.perf_counter() - start):.0f} ms"
        )


def _http(bind: str, port: int, host: str | None, timeout: float, quiet: bool) -> None:
    import json
    import urllib.error
    import urllib.request

    target = host or (bind if bind not in ("0.0.0.0", "::", "") else "127.0.0.1")
    url = f"http://{target}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 503: some check failed
        try:
            body = json.loads(exc.read())
        except ValueError:
            body = {"status": "fail", "checks": {}}
    except (OSError, ValueError) as exc:
        typer.echo(f"unhealthy: {url}: {exc}", err=True)
        raise typer.Exit(1) from exc
    failed = {k: v for k, v in body.get("checks", {}).items() if not v.get("ok")}
    if body.get("status") != "ok":
        for name, check in failed.items():
            typer.echo(f"unhealthy: {name}: {check.get('detail', '')}", err=True)
        raise typer.Exit(1)
    if not quiet:
        typer.echo(f"healthy: {url}: {len(body.get('checks', {}))} checks ok")
