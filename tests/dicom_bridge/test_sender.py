"""The C-STORE/C-ECHO SCU against real dcmtk ``storescp`` processes (and pynetdicom SCPs).

dcmtk tests are marked ``interop``. Without ``storescp`` on PATH they are skipped, or
fail when ``APPLIANCE_REQUIRE_INTEROP=1``. Shared data under ../shared/data is only read.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom import dcmread
from pydicom.uid import UID
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_bridge import sender as sender_module
from dicom_bridge.errors import DicomBridgeError, SendError
from dicom_bridge.netutil import quiet_identifiers, set_tcp_nodelay
from dicom_bridge.sender import (
    MAX_CONTEXTS,
    RemoteNode,
    SendResult,
    TlsClientSettings,
    echo,
    send_files,
)
from dicom_bridge.sop_classes import (
    CT_IMAGE,
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG_2000_LOSSLESS,
    RLE_LOSSLESS,
    SEGMENTATION,
)
from dicom_bridge.synthetic import SeriesGeometry, write_series
from tests.peers import SHARED_DATA, free_port, require_program

SHARED = SHARED_DATA
J2K_DIR = SHARED / "ct_abdomen_totalseg_j2k" / "dicom_uids_repaired"
SEG_FILE = SHARED / "seg_examples" / "dcmqi_iowa2dicom_tumor_seg.dcm"
LABEL_MAP_SEG_FILE = SHARED / "seg_examples" / "dcmqi_labelmap_seg_ppv5.dcm"
SEG_RLE_FILE = SHARED / "seg_examples" / "pydicom_data_dcmqi_liver" / "liver_rle.dcm"
TIMEOUT_S = 5.0


# --- fixtures ---------------------------------------------------------------------------


@dataclass
class Storescp:
    port: int
    out_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def node(self, **kwargs: object) -> RemoteNode:
        options: dict[str, object] = {"timeout_s": TIMEOUT_S, **kwargs}
        return RemoteNode("TESTPACS", "127.0.0.1", self.port, **options)  # type: ignore[arg-type]

    def received(self) -> list[Path]:
        return sorted(p for p in self.out_dir.iterdir() if p.is_file())


def _wait_listening(proc: subprocess.Popen[bytes], port: int, deadline_s: float) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


StartStorescp = Callable[..., Storescp]


@pytest.fixture
def start_storescp(tmp_path: Path) -> Iterator[StartStorescp]:
    """Start ``storescp -aet TESTPACS <options> -od <dir> <port>`` on 127.0.0.1."""
    binary = require_program("storescp")
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str, name: str = "pacs") -> Storescp:
        out_dir = tmp_path / f"{name}-in"
        out_dir.mkdir()
        log = tmp_path / f"{name}.log"
        for _attempt in range(3):  # the free port can be taken between bind and use
            port = free_port()
            with log.open("ab") as log_file:
                proc = subprocess.Popen(
                    [binary, "-aet", "TESTPACS", *options, "-od", str(out_dir), str(port)],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "TCP_NODELAY": "1"},
                )
            started.append(proc)
            if _wait_listening(proc, port, deadline_s=10):
                return Storescp(port, out_dir, proc, log)
            _stop(proc)
        pytest.fail(f"storescp did not start; log:\n{log.read_text(errors='replace')}")

    yield start
    for proc in started:
        _stop(proc)


@pytest.fixture
def pacs(start_storescp: StartStorescp) -> Storescp:
    """Accepts every transfer syntax (+xa), unique file names (+uf)."""
    return start_storescp("+xa", "+uf")


def _shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data {path} not present")
    return path


def _j2k_file() -> Path:
    files = sorted(_shared(J2K_DIR).iterdir())
    if not files:
        pytest.skip("no JPEG 2000 CT files in the shared data")
    return files[0]


def _by_sop_uid(paths: list[Path]) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}


# --- C-ECHO -----------------------------------------------------------------------------


@pytest.mark.interop
def test_echo_succeeds(pacs: Storescp) -> None:
    echo(pacs.node())


def test_echo_to_closed_port_says_refused() -> None:
    node = RemoteNode("TESTPACS", "127.0.0.1", free_port(), timeout_s=TIMEOUT_S)
    with pytest.raises(SendError, match="refused") as info:
        echo(node)
    assert isinstance(info.value, DicomBridgeError)
    assert str(node.port) in str(info.value)


@pytest.mark.interop
def test_rejected_association_is_explained(start_storescp: StartStorescp, tmp_path: Path) -> None:
    # dcmtk 3.6.7 storescp has no option to check the called AE title; --refuse rejects all.
    refusing = start_storescp("--refuse")
    for _ in range(3):  # the rejection used to race with pynetdicom's connection check
        with pytest.raises(SendError, match="rejected the association"):
            echo(refusing.node())
    with pytest.raises(SendError, match="rejected the association"):
        send_files(refusing.node(), write_series(tmp_path, SeriesGeometry(1, 8, 8)))


@pytest.fixture
def picky_scp() -> Iterator[int]:
    """A pynetdicom SCP that requires called AE ``PICKY`` and calling AE ``SEGAPPLIANCE``."""
    ae = AE(ae_title="PICKY")
    ae.require_called_aet = True
    ae.require_calling_aet = ["SEGAPPLIANCE"]
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    assert server is not None
    try:
        yield port
    finally:
        server.shutdown()


def test_wrong_called_ae_is_explained(picky_scp: int) -> None:
    echo(RemoteNode("PICKY", "127.0.0.1", picky_scp, timeout_s=TIMEOUT_S))
    with pytest.raises(SendError, match=r"called AE title not recognised.*'WRONG'"):
        echo(RemoteNode("WRONG", "127.0.0.1", picky_scp, timeout_s=TIMEOUT_S))
    with pytest.raises(SendError, match=r"calling AE title not recognised.*'INTRUDER'"):
        echo(
            RemoteNode("PICKY", "127.0.0.1", picky_scp, calling_ae="INTRUDER", timeout_s=TIMEOUT_S)
        )


# --- C-STORE ----------------------------------------------------------------------------


@pytest.mark.interop
def test_send_series_arrives_identical(pacs: Storescp, tmp_path: Path) -> None:
    sent = write_series(tmp_path / "series", SeriesGeometry(slices=5, rows=32, columns=24))
    results = send_files(pacs.node(), sent)

    assert [r.path for r in results] == sent
    assert all(r.ok and r.status == 0x0000 and r.error is None for r in results), results
    received = _by_sop_uid(pacs.received())
    assert len(received) == 5
    for result in results:
        original = dcmread(result.path)
        copy = dcmread(received[result.sop_instance_uid])
        assert copy.file_meta.TransferSyntaxUID == EXPLICIT_VR_LE
        assert copy.SOPClassUID == CT_IMAGE
        assert copy.PixelData == original.PixelData
        assert copy.PatientID == original.PatientID


@pytest.mark.interop
def test_jpeg2000_file_keeps_its_transfer_syntax(pacs: Storescp) -> None:
    j2k = _j2k_file()
    (result,) = send_files(pacs.node(), [j2k])

    assert result.ok, result
    (received,) = pacs.received()
    original, copy = dcmread(j2k), dcmread(received)
    assert copy.file_meta.TransferSyntaxUID == JPEG_2000_LOSSLESS
    assert copy.SOPInstanceUID == original.SOPInstanceUID == result.sop_instance_uid
    assert copy.PixelData == original.PixelData  # the encapsulated codestream, untouched


@pytest.mark.interop
def test_segmentation_files_are_sent(pacs: Storescp) -> None:
    seg, seg_rle = _shared(SEG_FILE), _shared(SEG_RLE_FILE)
    results = send_files(pacs.node(), [seg, seg_rle])

    assert all(r.ok for r in results), results
    copies = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, pacs.received())}
    for path, syntax in ((seg, EXPLICIT_VR_LE), (seg_rle, RLE_LOSSLESS)):
        original = dcmread(path)
        copy = copies[str(original.SOPInstanceUID)]
        assert copy.SOPClassUID == SEGMENTATION
        assert copy.file_meta.TransferSyntaxUID == syntax
        assert copy.PixelData == original.PixelData


@pytest.mark.interop
def test_sop_class_unknown_to_the_peer_fails_per_file(pacs: Storescp, tmp_path: Path) -> None:
    # dcmtk 3.6.7 does not know Label Map Segmentation Storage (and pacs runs without -pm).
    label_map = _shared(LABEL_MAP_SEG_FILE)
    (ct,) = write_series(tmp_path / "series", SeriesGeometry(slices=1, rows=8, columns=8))
    alone = send_files(pacs.node(), [label_map])  # no context accepted at all
    mixed = send_files(pacs.node(), [label_map, ct])

    name = UID("1.2.840.10008.5.1.4.1.1.66.7").name  # the bare UID while pydicom lacks a name
    expected = f"no accepted presentation context for {name} in Explicit VR Little Endian"
    assert [(r.ok, r.status, r.error) for r in alone] == [(False, None, expected)]
    assert [(r.ok, r.error) for r in mixed] == [(False, expected), (True, None)]
    assert len(pacs.received()) == 1


@pytest.mark.interop
def test_implicit_only_peer_gets_reencoded_files(
    start_storescp: StartStorescp, tmp_path: Path
) -> None:
    implicit_only = start_storescp("+xi", "+uf", name="implicit")
    sent = write_series(tmp_path / "series", SeriesGeometry(slices=2, rows=16, columns=16))
    j2k = _j2k_file()
    results = send_files(implicit_only.node(), [sent[0], j2k, sent[1]])

    assert [r.ok for r in results] == [True, False, True], results
    failed = results[1]
    assert failed.status is None
    assert failed.error == (
        "no accepted presentation context for CT Image Storage "
        "in JPEG 2000 Image Compression (Lossless Only)"
    )
    received = _by_sop_uid(implicit_only.received())
    assert len(received) == 2
    for result in (results[0], results[2]):
        copy = dcmread(received[result.sop_instance_uid])
        assert copy.file_meta.TransferSyntaxUID == IMPLICIT_VR_LE
        assert copy.PixelData == dcmread(result.path).PixelData


@pytest.mark.interop
@pytest.mark.alone  # an abort is seen at once, timed
def test_abort_mid_association_marks_the_rest(
    start_storescp: StartStorescp, tmp_path: Path
) -> None:
    aborting = start_storescp("--abort-after", name="aborting")
    sent = write_series(tmp_path / "series", SeriesGeometry(slices=3, rows=8, columns=8))
    started = time.monotonic()
    results = send_files(aborting.node(), sent)

    assert time.monotonic() - started < TIMEOUT_S  # no waiting for a timeout
    assert [r.ok for r in results] == [False, False, False]
    assert all(r.status is None and r.error == "association aborted" for r in results)


@pytest.mark.interop
def test_unreadable_files_are_reported_not_raised(pacs: Storescp, tmp_path: Path) -> None:
    (good,) = write_series(tmp_path / "series", SeriesGeometry(slices=1, rows=8, columns=8))
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not DICOM")
    missing = tmp_path / "missing.dcm"
    results = send_files(pacs.node(), [not_dicom, good, missing])

    assert [r.ok for r in results] == [False, True, False]
    assert results[0].error is not None and "not a DICOM file" in results[0].error
    assert results[2].error is not None and "cannot read the file" in results[2].error
    assert results[0].sop_instance_uid == "" and results[0].status is None
    assert len(pacs.received()) == 1


def test_send_nothing_does_not_connect() -> None:
    node = RemoteNode("TESTPACS", "127.0.0.1", free_port(), timeout_s=TIMEOUT_S)
    assert send_files(node, []) == []


def test_send_to_closed_port_raises(tmp_path: Path) -> None:
    sent = write_series(tmp_path / "series", SeriesGeometry(slices=1, rows=8, columns=8))
    node = RemoteNode("TESTPACS", "127.0.0.1", free_port(), timeout_s=TIMEOUT_S)
    with pytest.raises(SendError, match=r"connection refused by 127\.0\.0\.1:"):
        send_files(node, sent)


# --- TLS --------------------------------------------------------------------------------


def _make_tls_files(directory: Path) -> dict[str, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    files = {name: directory / f"{name}.pem" for name in ("ca", "ca_key", "srv", "srv_key")}
    ext = directory / "srv.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca, ca_key, csr = files["ca"], files["ca_key"], directory / "srv.csr"
    commands = [
        [openssl, "req", "-x509", *ec, "-days", "2", "-keyout", ca_key, "-out", ca,
         "-subj", "/CN=Test CA"],
        [openssl, "req", *ec, "-keyout", files["srv_key"], "-out", csr, "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", files["srv"], "-days", "2", "-extfile", ext],
    ]  # fmt: skip
    for command in commands:
        subprocess.run([str(c) for c in command], check=True, capture_output=True)
    return files


@pytest.mark.interop
def test_tls_echo_and_send(start_storescp: StartStorescp, tmp_path: Path) -> None:
    tls = _make_tls_files(tmp_path)
    pacs = start_storescp(
        "+tls", str(tls["srv_key"]), str(tls["srv"]), "-pw", "-ic", "+uf", name="tls"
    )
    trusted = pacs.node(tls=TlsClientSettings(ca_file=tls["ca"]))
    echo(trusted)
    sent = write_series(tmp_path / "series", SeriesGeometry(slices=2, rows=8, columns=8))
    assert all(r.ok for r in send_files(trusted, sent))
    assert len(pacs.received()) == 2

    untrusted = pacs.node(tls=TlsClientSettings(ca_file=tls["srv"]))  # not the issuer
    with pytest.raises(SendError, match="TLS handshake"):
        echo(untrusted)


def test_tls_settings_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="go together"):
        TlsClientSettings(cert_file=tmp_path / "c.pem")
    with pytest.raises(SendError, match="TLS"):
        TlsClientSettings(ca_file=tmp_path / "absent.pem").ssl_context()


# --- values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ae_title",
    ["", "A" * 17, "BACK\\SLASH", "TAB\tAE", "    ", "NUL\x00", "ÄRZTE"],
)
def test_remote_node_rejects_bad_ae_titles(ae_title: str) -> None:
    with pytest.raises(ValueError):
        RemoteNode(ae_title, "127.0.0.1", 104)
    with pytest.raises(ValueError):
        RemoteNode("PACS", "127.0.0.1", 104, calling_ae=ae_title)


@pytest.mark.parametrize("port", [0, 65536, -1, True])
def test_remote_node_rejects_bad_ports(port: int) -> None:
    with pytest.raises(ValueError):
        RemoteNode("PACS", "127.0.0.1", port)


@pytest.mark.parametrize("timeout_s", [0, -1.0, float("inf"), float("nan")])
def test_remote_node_rejects_bad_timeouts(timeout_s: float) -> None:
    with pytest.raises(ValueError):
        RemoteNode("PACS", "127.0.0.1", 104, timeout_s=timeout_s)


def test_remote_node_accepts_a_16_char_title_with_inner_spaces() -> None:
    node = RemoteNode("MY PACS 16 CHARS", "pacs.local", 11112)
    assert node.calling_ae == "SEGAPPLIANCE"
    assert str(node) == "MY PACS 16 CHARS@pacs.local:11112"
    with pytest.raises(ValueError):
        RemoteNode("PACS", " pacs.local", 104)


def test_send_result_is_frozen() -> None:
    result = SendResult(Path("x.dcm"), "1.2.3", 0, True, None)
    with pytest.raises(AttributeError):
        result.ok = False  # type: ignore[misc]


def test_contexts_are_capped_and_needed_ones_come_first() -> None:
    header = sender_module._FileHeader
    headers = [
        header(Path(f"{i}.dcm"), UID(f"1.2.3.{i}"), f"9.{i}", UID("1.2.840.10008.1.2.2"))
        for i in range(70)
    ]
    contexts, dropped = sender_module._build_contexts(headers)
    assert len(contexts) == MAX_CONTEXTS
    assert dropped == 140 - MAX_CONTEXTS
    # The 70 little endian contexts (needed to re-encode) all made it.
    little = [cx for cx in contexts if cx.transfer_syntax[0] == EXPLICIT_VR_LE]
    assert len(little) == 70
    assert little[0].transfer_syntax == [EXPLICIT_VR_LE, IMPLICIT_VR_LE]


def test_contexts_follow_the_files() -> None:
    header = sender_module._FileHeader
    ct, seg = CT_IMAGE, SEGMENTATION
    headers = [
        header(Path("a"), ct, "1.1", IMPLICIT_VR_LE),
        header(Path("b"), ct, "1.2", EXPLICIT_VR_LE),
        header(Path("c"), ct, "1.3", JPEG_2000_LOSSLESS),
        header(Path("d"), seg, "1.4", RLE_LOSSLESS),
        header(Path("e"), seg, "1.5", UID("1.2.826.0.1.3680043.99.1")),  # private syntax
        header(Path("f"), seg, "1.6", DEFLATED_EXPLICIT_VR_LE),
    ]
    contexts, dropped = sender_module._build_contexts(headers)
    assert dropped == 0
    assert [(cx.abstract_syntax, cx.transfer_syntax) for cx in contexts] == [
        (ct, [IMPLICIT_VR_LE, EXPLICIT_VR_LE]),
        (ct, [JPEG_2000_LOSSLESS]),
        (seg, [RLE_LOSSLESS]),
        (seg, [UID("1.2.826.0.1.3680043.99.1")]),
        (seg, [EXPLICIT_VR_LE, IMPLICIT_VR_LE]),  # needed: lets the deflated file be re-encoded
        (seg, [DEFLATED_EXPLICIT_VR_LE]),  # nice to have: sends it as it is
    ]


class _FakeReactor(threading.Thread):
    def __init__(self) -> None:
        super().__init__(target=self.poll)
        self.messages: queue.Queue[tuple[int, str]] = queue.Queue()
        self.dimse = SimpleNamespace(get_msg=self.get_msg)
        self.polled: list[object] = []

    def get_msg(self, block: bool = False) -> tuple[int | None, str | None]:
        try:
            return self.messages.get(block=block, timeout=1)
        except queue.Empty:
            return None, None

    def poll(self) -> None:
        self.polled.append(self.dimse.get_msg(block=False))


def test_reactor_thread_cannot_take_the_senders_response() -> None:
    """pynetdicom's reactor can steal a C-STORE-RSP (a race); the guard stops that."""
    reactor = _FakeReactor()
    reactor.messages.put((1, "C-STORE-RSP"))
    sender_module._keep_reactor_off_responses(reactor)  # type: ignore[arg-type]
    reactor.start()
    reactor.join()
    assert reactor.polled == [(None, None)]
    assert reactor.dimse.get_msg(block=True) == (1, "C-STORE-RSP")  # the sender gets it


# --- netutil ----------------------------------------------------------------------------


def test_set_tcp_nodelay_sets_the_option_and_tolerates_missing_sockets() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        event = SimpleNamespace(
            assoc=SimpleNamespace(dul=SimpleNamespace(socket=SimpleNamespace(socket=sock)))
        )
        set_tcp_nodelay(event)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    set_tcp_nodelay(SimpleNamespace(assoc=SimpleNamespace(dul=SimpleNamespace(socket=None))))
    set_tcp_nodelay(
        SimpleNamespace(
            assoc=SimpleNamespace(dul=SimpleNamespace(socket=SimpleNamespace(socket=None)))
        )
    )


def test_nodelay_is_set_on_real_associations(picky_scp: int) -> None:
    seen: list[int] = []

    def spy(event: evt.Event) -> None:
        assert event.assoc.dul.socket is not None
        sock = event.assoc.dul.socket.socket
        assert sock is not None
        seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    original = sender_module._AssociationTracker.handlers

    def handlers(self: sender_module._AssociationTracker) -> list[evt.EventHandlerType]:
        return [*original(self), (evt.EVT_CONN_OPEN, spy)]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sender_module._AssociationTracker, "handlers", handlers)
        echo(RemoteNode("PICKY", "127.0.0.1", picky_scp, timeout_s=TIMEOUT_S))
    assert seen and seen[0] != 0


def test_quiet_identifiers() -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_config, "LOG_REQUEST_IDENTIFIERS", True)
        mp.setattr(_config, "LOG_RESPONSE_IDENTIFIERS", True)
        quiet_identifiers()
        assert _config.LOG_REQUEST_IDENTIFIERS is False
        assert _config.LOG_RESPONSE_IDENTIFIERS is False
