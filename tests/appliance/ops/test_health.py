"""``/healthz``: each check (listener, threads, database, disk, models) says whether it
passes and why not; the endpoint answers 200 when all pass and 503 when one fails."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import AppConfig, parse_config
from appliance.ops.health import Check, _listener, check_health, report
from appliance.ops.http import StatusServer
from appliance.site_models.registry import NetworkCache
from appliance.store import Store
from dicom_bridge.listener import Listener, ListenerSettings
from dicom_bridge.spool import Spool
from tests.appliance.flow.helpers import activate_tiny


def make_config(root: Path, *, min_free_mb: int = 0) -> AppConfig:
    return parse_config(
        {
            "storage": {"root": str(root), "fsync": False, "min_free_mb": min_free_mb},
            "models": {"shipped": "", "device": "cpu"},
            "routing": {"rules": [{"task": "liver_ct", "modality": "CT", "name": "liver"}]},
        }
    )


@pytest.fixture
def config(tmp_path: Path) -> AppConfig:
    return make_config(tmp_path / "data")


@pytest.fixture
def store(config: AppConfig) -> Iterator[Store]:
    config.storage.root.mkdir(parents=True, exist_ok=True)
    s = Store(config.storage.database)
    yield s
    s.close()


@pytest.fixture
def listening(config: AppConfig, tmp_path: Path) -> Iterator[int]:
    """The appliance's DICOM listener on loopback (the check does a real C-ECHO)."""
    listener = Listener(
        ListenerSettings(config.dicom.ae_title, "127.0.0.1", 0),
        Spool(tmp_path / "health-spool"),
        lambda inst, publish: None,
    )
    listener.start()
    yield listener.port
    listener.stop()


def test_a_port_that_accepts_tcp_but_does_not_answer_dicom_fails(config: AppConfig) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    try:
        checks = by_name([_listener(config, server.getsockname()[1], timeout=1.0)])
    finally:
        server.close()
    assert not checks["listener"].ok
    assert "C-ECHO" in checks["listener"].detail


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return int(server.getsockname()[1])


class Threads:
    """Real threads named as the service's: each runs until stopped."""

    def __init__(self, *names: str) -> None:
        self.stops = {name: threading.Event() for name in names}
        self.threads = [
            threading.Thread(target=stop.wait, name=name, daemon=True)
            for name, stop in self.stops.items()
        ]
        for thread in self.threads:
            thread.start()

    def stop(self, name: str) -> None:
        self.stops[name].set()
        next(t for t in self.threads if t.name == name).join(5)

    def close(self) -> None:
        for name in self.stops:
            self.stop(name)


@pytest.fixture
def threads() -> Iterator[Threads]:
    running = Threads("scheduler", "worker", "outbox")
    yield running
    running.close()


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def loaded_model(store: Store, config: AppConfig, tmp_path: Path) -> NetworkCache:
    activate_tiny(store, config, tmp_path)
    networks = NetworkCache(config)
    record = store.active_model("liver_ct")
    assert record is not None
    networks.get(record)
    return networks


def test_every_check_passes_when_all_is_well(
    tmp_path: Path, config: AppConfig, store: Store, listening: int, threads: Threads
) -> None:
    networks = loaded_model(store, config, tmp_path)
    checks = check_health(
        config=config,
        store=store,
        listener_port=listening,
        threads=threads.threads,
        networks=networks,
        load_errors={},
    )
    found = by_name(checks)
    assert list(found) == [
        "listener",
        "scheduler",
        "worker",
        "outbox",
        "database",
        "disk",
        "model liver_ct",
    ]
    assert all(c.ok for c in checks), checks
    assert found["listener"].detail == f"C-ECHO 127.0.0.1:{listening} ok"
    assert found["worker"].detail == "running"
    assert found["database"].detail.startswith("schema version ")
    assert "MiB free" in found["disk"].detail
    assert found["model liver_ct"].detail.startswith("0.0.1-test loaded (sha256 ")
    assert report(checks)["status"] == "ok"


def test_each_failing_check_says_why(
    tmp_path: Path, store: Store, listening: int, threads: Threads
) -> None:
    config = make_config(tmp_path / "data", min_free_mb=100_000_000)  # ~95 TiB: more than this disk
    threads.stop("outbox")
    port = closed_port()
    checks = by_name(
        check_health(
            config=config,
            store=store,
            listener_port=port,
            threads=threads.threads,
            networks=NetworkCache(config),
            load_errors={},
        )
    )
    assert not checks["listener"].ok
    assert f"connection refused by 127.0.0.1:{port}" in checks["listener"].detail
    assert not checks["outbox"].ok and checks["outbox"].detail == "thread has stopped"
    assert checks["worker"].ok and checks["scheduler"].ok
    assert not checks["disk"].ok and "new C-STOREs are refused" in checks["disk"].detail
    assert not checks["model liver_ct"].ok
    assert "no active model" in checks["model liver_ct"].detail
    assert checks["database"].ok

    result = report(list(checks.values()))
    assert result["status"] == "fail"
    assert result["checks"]["outbox"] == {"ok": False, "detail": "thread has stopped"}


def test_model_check_not_loaded_yet_or_did_not_load(
    tmp_path: Path, config: AppConfig, store: Store
) -> None:
    activate_tiny(store, config, tmp_path)

    def model_check(load_errors: dict[str, str]) -> Check:
        checks = check_health(
            config=config,
            store=store,
            listener_port=closed_port(),
            threads=[],
            networks=NetworkCache(config),
            load_errors=load_errors,
        )
        return by_name(checks)["model liver_ct"]

    check = model_check({})
    assert not check.ok and check.detail == "0.0.1-test not loaded yet"
    check = model_check({"liver_ct": "NotFoundError: sha256 mismatch"})
    assert not check.ok
    assert check.detail == "0.0.1-test did not load: NotFoundError: sha256 mismatch"


def test_database_check_fails_when_the_database_cannot_be_read(
    config: AppConfig, store: Store
) -> None:
    store.close()
    checks = by_name(
        check_health(
            config=config,
            store=store,
            listener_port=closed_port(),
            threads=[],
            networks=NetworkCache(config),
            load_errors={},
        )
    )
    assert not checks["database"].ok and "database error" in checks["database"].detail
    assert not checks["model liver_ct"].ok  # its record cannot be read either


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_healthz_is_200_when_every_check_passes_and_503_when_one_fails(
    tmp_path: Path, config: AppConfig, store: Store, listening: int, threads: Threads
) -> None:
    networks = loaded_model(store, config, tmp_path)

    def health() -> dict[str, object]:
        return report(
            check_health(
                config=config,
                store=store,
                listener_port=listening,
                threads=threads.threads,
                networks=networks,
                load_errors={},
            )
        )

    server = StatusServer("127.0.0.1", 0, health, lambda: b"")
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        code, body = get(f"{base}/healthz")
        assert code == 200 and json.loads(body)["status"] == "ok"

        threads.stop("worker")
        code, body = get(f"{base}/healthz")
        answer = json.loads(body)
        assert code == 503 and answer["status"] == "fail"
        assert answer["checks"]["worker"] == {"ok": False, "detail": "thread has stopped"}
        assert answer["checks"]["database"]["ok"] is True

        assert get(f"{base}/other")[0] == 404
    finally:
        server.stop()


def _closed(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_silent_http_clients_cannot_tie_up_the_endpoint() -> None:
    server = StatusServer(
        "127.0.0.1",
        0,
        lambda: {"status": "ok", "checks": {}},
        lambda: b"",
        read_timeout=0.5,
        max_connections=2,
    )
    server.start()
    try:
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        over = socket.create_connection(("127.0.0.1", server.port))
        assert _closed(over, 1.0)  # every slot busy: closed on accept
        for sock in silent:
            assert _closed(sock, 2.0)  # no request within the read timeout: dropped
            sock.close()
        over.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as rsp:
            assert rsp.status == 200
    finally:
        server.stop()
