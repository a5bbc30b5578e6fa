"""``make demo``: the appliance's main job end to end on embedded defaults, in one process.

A synthetic CT study with known geometry is pushed to a running appliance, which stores it
durably, assembles the series once it is quiet, builds the volume and checks its geometry,
then sends objects back to the PACS through the durable outbox. Until the segmentation
model lands (it will send a DICOM SEG), the send-back step forwards the received series,
so the whole DICOM path in and out is exercised. The PACS is a minimal built-in receiver
(a second listener with its own spool).
"""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.config import parse_config
from appliance.service import Service
from appliance.states import OutboxState, SeriesState
from dicom_bridge.listener import Listener, ListenerSettings
from dicom_bridge.sender import RemoteNode, send_files
from dicom_bridge.spool import Spool
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series

Echo = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class DemoResult:
    instances_sent: int
    series_state: str
    shape: tuple[int, ...]
    affine_error_mm: float
    push_seconds: float
    ready_seconds: float
    sendback_seconds: float
    returned_instances: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"demo: {what} did not happen within {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - start


def run_demo(workdir: Path | None = None, *, slices: int = 60, echo: Echo = print) -> DemoResult:
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="appliance-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))

    geometry = SeriesGeometry(
        slices=slices,
        rows=256,
        columns=256,
        pixel_spacing=(1.2, 1.2),
        slice_spacing=2.5,
        origin=(-153.0, -180.0, -60.0),
    )
    identity = SeriesIdentity()
    files = write_series(run_dir / "study", geometry, identity=identity)
    echo(f"1. generated a synthetic CT series: {slices} slices of 256x256 ({run_dir / 'study'})")

    pacs_port, app_port = _free_port(), _free_port()
    received: list[str] = []
    pacs = Listener(
        ListenerSettings(ae_title="DEMOPACS", bind="127.0.0.1", port=pacs_port),
        Spool(run_dir / "pacs"),
        on_instance=lambda inst: received.append(inst.key.sop_uid),
    )
    pacs.start()
    echo(f"2. PACS: built-in receiver DEMOPACS on 127.0.0.1:{pacs_port}")

    config = parse_config(
        {
            "dicom": {
                "ae_title": "SEGAPPLIANCE",
                "port": app_port,
                "bind": "127.0.0.1",
                "allowed_callers": ["DEMOPACS"],
                "series_quiet_seconds": 2.0,
            },
            "storage": {"root": str(run_dir / "appliance")},
            "outbox": {"backoff_initial_seconds": 1.0, "poll_seconds": 0.2},
            "destinations": [
                {"name": "pacs", "ae_title": "DEMOPACS", "host": "127.0.0.1", "port": pacs_port}
            ],
        }
    )
    service = Service(config)
    service.start()
    echo(f"   appliance SEGAPPLIANCE on 127.0.0.1:{app_port}, storage {config.storage.root}")
    try:
        node = RemoteNode("SEGAPPLIANCE", "127.0.0.1", app_port, calling_ae="DEMOPACS")
        start = time.monotonic()
        results = send_files(node, files)
        push_s = time.monotonic() - start
        ok = sum(r.ok for r in results)
        last_ack = time.monotonic()
        echo(
            f"3. PACS pushed {ok}/{len(files)} instances over one association in "
            f"{push_s:.2f} s ({ok / push_s:.0f} images/s)"
        )
        if ok != len(files):
            raise RuntimeError("demo: the appliance did not acknowledge every instance")

        store = service.store
        ready_s = _wait(
            lambda: (
                store.get_series(identity.series_uid).state
                in (SeriesState.DONE, SeriesState.REJECTED, SeriesState.FAILED)
            ),
            60,
            "series processing",
        )
        series = store.get_series(identity.series_uid)
        if series.state is not SeriesState.DONE or series.result is None:
            raise RuntimeError(
                f"demo: series ended {series.state}: {series.reason} {series.detail}"
            )
        affine = np.asarray(series.result["affine_lps"])
        error = float(np.abs(affine - geometry.affine()).max())
        echo(
            f"4. series complete after {config.dicom.series_quiet_seconds:.0f} s quiet; volume "
            f"{'x'.join(str(v) for v in series.result['shape'])}, spacing "
            f"{series.result['spacing_mm']} mm; affine vs truth: max error {error:.2e} mm "
            f"({ready_s:.1f} s after the last image)"
        )

        echo(
            "5. send-back: until segmentation lands, the received series is forwarded to "
            "the PACS through the durable outbox"
        )
        start = time.monotonic()
        for inst in store.series_instances(identity.series_uid):
            store.enqueue("pacs", inst.path, inst.sop_uid, inst.series_uid)
        sent_s = _wait(
            lambda: store.outbox_counts()[OutboxState.SENT] == len(files), 60, "send-back"
        )
        back = len(
            set(received) & {inst.sop_uid for inst in store.series_instances(identity.series_uid)}
        )
        echo(
            f"   {back}/{len(files)} instances arrived at the PACS in {sent_s:.2f} s "
            f"({time.monotonic() - last_ack:.1f} s from last image acknowledged)"
        )
    finally:
        service.stop()
        pacs.stop()

    result = DemoResult(
        len(files),
        series.state.value,
        tuple(series.result["shape"]),
        error,
        push_s,
        ready_s,
        sent_s,
        back,
    )
    echo("")
    echo(f"{'step':<28}{'result':>30}")
    echo(f"{'ingest (images/s)':<28}{len(files) / push_s:>30.0f}")
    echo(f"{'series state':<28}{result.series_state:>30}")
    echo(f"{'volume shape':<28}{'x'.join(map(str, result.shape)):>30}")
    echo(f"{'affine max error (mm)':<28}{error:>30.2e}")
    echo(f"{'sent back to PACS':<28}{f'{back}/{len(files)}':>30}")
    return result
