"""``appliance healthcheck``: is this appliance's own DICOM listener answering C-ECHO?

Meant for a container HEALTHCHECK: exit 0 when the listener on the configured port
accepts an association and answers C-ECHO with Success, 1 otherwise (2: bad config).
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
) -> None:
    """C-ECHO the appliance's own listener; exit 0 when it answers Success."""
    cfg = load(config, audit=False)  # runs every 30 s under Docker: not an admin action
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
