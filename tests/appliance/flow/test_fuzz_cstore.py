"""Fuzzing the C-STORE handling path: at least 10,000 mutated DICOM datasets (hypothesis,
derandomised so CI is reproducible) go over real pynetdicom associations into the real
listener, spool and store (the appliance's ``Ingest``). Every input gets one of the
listener's own statuses: a handler that raised would show as pynetdicom's 0xC211/0xC210,
a dead listener as a failed association. Afterwards a valid dataset still goes through.

Seeds: small CT, MR and SEG-like datasets in explicit/implicit little endian, big endian
and deflated transfer syntaxes. Mutations: bit flips, byte overwrites, inserted and
deleted runs, truncation, and element lengths set to absurd values.

``APPLIANCE_FUZZ_EXAMPLES`` changes the count (default 10,000).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, _config, evt
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from appliance.flow.ingest import Ingest
from appliance.store import Store
from dicom_bridge.listener import Listener, ListenerSettings, StoreStatus
from dicom_bridge.netutil import set_tcp_nodelay
from dicom_bridge.spool import Spool
from dicom_bridge.synthetic import SeriesGeometry, write_series
from tests.peers import free_port

# pydicom warns about the garbled values it reads, quoting them (the service turns that off).
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")]

EXAMPLES = int(os.environ.get("APPLIANCE_FUZZ_EXAMPLES", "10000"))
OURS = {int(s) for s in StoreStatus}
SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)


def _seeds(directory: Path) -> list[tuple[bytes, bytes, str]]:
    """(file header with meta, dataset bytes, SOP class) per seed."""
    out = []
    for modality, geometry in (
        ("CT", SeriesGeometry(slices=1, rows=16, columns=16)),
        ("MR", SeriesGeometry(slices=1, rows=8, columns=12)),
    ):
        (path,) = write_series(directory / modality, geometry, modality=modality)
        for syntax in SYNTAXES:
            ds = dcmread(path)
            ds.file_meta.TransferSyntaxUID = syntax
            body = DicomBytesIO()
            body.is_little_endian = syntax.is_little_endian or syntax.is_deflated
            body.is_implicit_VR = syntax.is_implicit_VR
            write_dataset(body, ds)
            dataset = body.getvalue()
            if syntax.is_deflated:
                packer = zlib.compressobj(9, zlib.DEFLATED, -15)
                dataset = packer.compress(dataset) + packer.flush()
            header = b"\x00" * 128 + b"DICM" + encode_file_meta(ds.file_meta)
            out.append((header, dataset, str(ds.SOPClassUID)))
    return out


Mutation = tuple[str, int, bytes]

MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate", "length"]),
        st.integers(min_value=0, max_value=2**31),
        st.binary(min_size=1, max_size=12),
    ),
    min_size=1,
    max_size=6,
)


def mutate(data: bytes, mutations: list[Mutation]) -> bytes:
    buf = bytearray(data)
    for kind, where, payload in mutations:
        if not buf:
            break
        at = where % len(buf)
        if kind == "flip":
            buf[at] ^= 1 << (payload[0] % 8)
        elif kind == "overwrite":
            buf[at : at + len(payload)] = payload
        elif kind == "insert":
            buf[at:at] = payload
        elif kind == "delete":
            del buf[at : at + 1 + payload[0] % 64]
        elif kind == "truncate":
            del buf[at:]
        else:  # an element's length field: absurdly large, odd, or undefined
            value = (0xFFFFFFFF, 0x7FFFFFFF, 0xFFFF, 1, payload[0])[payload[-1] % 5]
            buf[at : at + 4] = value.to_bytes(4, "little")
    return bytes(buf)


class Client:
    """One association, re-opened whenever the listener (rightly) aborts it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ae = AE(ae_title="FUZZER")
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 30
        for sop_class in (CTImageStorage, MRImageStorage):
            for syntax in SYNTAXES:  # one context each, so every syntax is accepted
                self.ae.add_requested_context(sop_class, syntax)
        self.assoc: Any = None
        self.associations = 0

    def send(self, path: Path) -> int | None:
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = self.ae.associate(
                "127.0.0.1",
                self.port,
                ae_title="SEGAPPLIANCE",
                evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)],
            )
            self.associations += 1
            assert self.assoc.is_established, "the listener no longer accepts associations"
        status = self.assoc.send_c_store(path)
        return int(status.Status) if status and "Status" in status else None

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[Listener, Store]]:
    store = Store(tmp_path / "db" / "appliance.sqlite3")
    ingest = Ingest(store)
    listener = Listener(
        ListenerSettings("SEGAPPLIANCE", "127.0.0.1", free_port()),
        Spool(tmp_path / "spool", fsync=False),
        ingest.on_instance,
        ingest.on_rejection,
        ingest.on_association,
    )
    listener.start()
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the mutated bytes as they are
    yield listener, store
    _config.STORE_SEND_CHUNKED_DATASET = chunked
    listener.stop()
    store.close()


def test_mutated_datasets_never_crash_the_service(
    tmp_path: Path, target: tuple[Listener, Store]
) -> None:
    listener, store = target
    seeds = _seeds(tmp_path / "seeds")
    client = Client(listener.port)
    work = tmp_path / "input.dcm"
    statuses: dict[int | None, int] = {}

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(seed=st.integers(min_value=0, max_value=len(seeds) - 1), mutations=MUTATIONS)
    def one(seed: int, mutations: list[Mutation]) -> None:
        header, dataset, _ = seeds[seed]
        work.write_bytes(header + mutate(dataset, mutations))
        status = client.send(work)
        statuses[status] = statuses.get(status, 0) + 1
        assert status in OURS, f"status {status} is not one of the listener's own"

    try:
        one()
    finally:
        client.close()
    total = sum(statuses.values())
    print(f"fuzz: {total} inputs, {client.associations} associations, statuses {statuses}")
    assert total >= EXAMPLES
    assert statuses.get(int(StoreStatus.CANNOT_UNDERSTAND), 0) > 0  # the mutations bite
    assert statuses.get(int(StoreStatus.SUCCESS), 0) > 0  # ...and some still parse

    # the service still works: a valid dataset goes through and is recorded
    valid = Client(listener.port)
    header, dataset, _ = seeds[0]
    ds = dcmread(BytesIO(header + dataset))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(work, enforce_file_format=True)
    assert valid.send(work) == 0
    valid.close()
    assert store.has_instance(str(ds.SOPInstanceUID))
    assert list((tmp_path / "spool" / ".tmp").iterdir()) == []  # no partial files left
