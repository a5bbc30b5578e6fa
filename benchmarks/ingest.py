"""Ingest benchmark: one CT series pushed by dcmtk ``storescu`` over one association.

Run from the repository root::

    .venv/bin/python -m benchmarks.ingest [--slices 200] [--repeats 3] [--profile]

Targets, each started fresh for every push and stopped by PID afterwards:

* ``appliance``: ``appliance serve`` as a real process (fsync'd spool file + SQLite row
  before each success status);
* ``appliance-nofsync``: the same with ``[storage] fsync = false``;
* ``bare``: a pynetdicom SCP that discards every dataset (``benchmarks.bare_scp``), the
  library's ceiling on this machine;
* ``storescp``: dcmtk ``storescp`` writing files, a real receiver written in C++.

Pushes are interleaved across targets; each is timed from ``storescu`` start to exit.
``--profile`` first runs the appliance's listener, spool and store in this process with
timers around each stage of the current C-STORE handler (``_parse_dataset``,
``_check_native_pixel_length``, ``Spool.write`` system call by system call,
``encode_file_meta_group``, ``describe``, the store callback with its SQLite transaction) and
prints milliseconds per image, then times the header-only parse against a full
``dcmread`` offline on the same bytes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
APPLIANCE_AE = "SEGAPPLIANCE"
START_TIMEOUT = 60.0
PUSH_TIMEOUT = 240.0
SUCCESS_LINE = "Received Store Response (Success)"
TARGETS = ("appliance", "appliance-nofsync", "bare", "storescp")
DESCRIPTIONS = {
    "appliance": "appliance serve (fsync on)",
    "appliance-nofsync": "appliance serve (fsync off)",
    "bare": "bare pynetdicom (discard)",
    "storescp": "dcmtk storescp (to disk)",
}


# --- helpers ---------------------------------------------------------------------------------


def program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"{name} is not installed (apt-get install dcmtk)")
    return path


def nodelay_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"  # dcmtk keeps Nagle on otherwise: ~20 images/s on loopback
    return env


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def settle() -> None:
    """Flush every dirty page first, so no push pays for an earlier one's writeback."""
    os.sync()
    time.sleep(0.2)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A server process in its own session, with its output in a log file; stopped by PID."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.name = Path(args[0]).name
        self._handle = log.open("ab")
        self.proc = subprocess.Popen(
            list(args),
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            env=env or dict(os.environ),
            cwd=REPO,
            start_new_session=True,
        )

    def wait_port(self, port: int, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} "
                    f"before port {port} opened:\n{self.tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"port {port} did not open within {timeout:.0f} s:\n{self.tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._handle.close()

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


# --- targets ---------------------------------------------------------------------------------


@dataclass
class Running:
    """A started target: where to push, and how to count what it stored."""

    port: int
    ae_title: str
    child: Child
    count_stored: Callable[[], int | None]


def write_appliance_config(path: Path, *, port: int, root: Path, fsync: bool, quiet: float) -> Path:
    path.write_text(
        "\n".join(
            [
                "[dicom]",
                f'ae_title = "{APPLIANCE_AE}"',
                'bind = "127.0.0.1"',
                f"port = {port}",
                f"series_quiet_seconds = {quiet}",
                "[storage]",
                f"root = {json.dumps(str(root))}",
                f"fsync = {'true' if fsync else 'false'}",
                "[logging]",
                'level = "INFO"',
                "",
            ]
        )
    )
    return path


def count_files(directory: Path, pattern: str) -> int:
    return sum(1 for p in directory.glob(pattern) if p.is_file())


def start_target(name: str, workdir: Path, *, quiet: float) -> Running:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / f"{name}.log"
    if name in ("appliance", "appliance-nofsync"):
        root = workdir / "root"
        config = write_appliance_config(
            workdir / "appliance.toml", port=port, root=root, fsync=name == "appliance", quiet=quiet
        )
        child = Child([sys.executable, "-m", "appliance", "serve", "--config", str(config)], log)
        spool = root / "spool"
        running = Running(port, APPLIANCE_AE, child, lambda: count_files(spool, "*/*/*.dcm"))
    elif name == "bare":
        child = Child([sys.executable, "-m", "benchmarks.bare_scp", str(port), "BARESCP"], log)
        running = Running(port, "BARESCP", child, lambda: None)
    elif name == "storescp":
        out = workdir / "in"
        out.mkdir()
        child = Child(
            [program("storescp"), "-aet", "STORESCP", "-pdu", "131072", "-od", str(out), str(port)],
            log,
            env=nodelay_env(),
        )
        running = Running(port, "STORESCP", child, lambda: count_files(out, "*"))
    else:
        raise ValueError(f"unknown target {name!r}")
    try:
        child.wait_port(port)
    except BaseException:
        child.stop()
        raise
    return running


@dataclass(frozen=True)
class Push:
    seconds: float
    acked_at: float  # time.time() at storescu's exit
    acknowledged: int
    returncode: int
    output: str


def push(port: int, ae_title: str, files: Sequence[Path], *, calling_ae: str = "BENCH") -> Push:
    """storescu over one association; ``seconds`` from its start to its exit."""
    args = [
        program("storescu"),
        "-v",
        "-aet",
        calling_ae,
        "-aec",
        ae_title,
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]
    start = time.perf_counter()
    result = subprocess.run(
        args, capture_output=True, text=True, env=nodelay_env(), timeout=PUSH_TIMEOUT, check=False
    )
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    return Push(seconds, time.time(), output.count(SUCCESS_LINE), result.returncode, output)


@dataclass
class Result:
    name: str
    seconds: list[float] = field(default_factory=list)

    def rates(self, slices: int) -> list[float]:
        return [slices / s for s in self.seconds]


def run_once(
    name: str, workdir: Path, files: Sequence[Path], warmup: Sequence[Path], *, quiet: float
) -> float:
    """Start ``name``, push ``warmup`` (untimed), push ``files`` (timed), stop, verify."""
    target = start_target(name, workdir, quiet=quiet)
    try:
        if warmup:
            first = push(target.port, target.ae_title, warmup)
            if first.returncode != 0 or first.acknowledged != len(warmup):
                raise RuntimeError(
                    f"{name}: warm-up push failed (storescu rc "
                    f"{first.returncode})\n{first.output[-2000:]}"
                )
        settle()
        result = push(target.port, target.ae_title, files)
    finally:
        target.child.stop()
    problems = []
    if result.returncode != 0:
        problems.append(f"storescu exited with {result.returncode}")
    if result.acknowledged != len(files):
        problems.append(f"{result.acknowledged} of {len(files)} acknowledged with success")
    stored = target.count_stored()
    if stored is not None and stored != len(files) + len(warmup):
        problems.append(f"{stored} of {len(files) + len(warmup)} files stored")
    if problems:
        raise RuntimeError(
            f"{name}: "
            + "; ".join(problems)
            + "\nstorescu output tail:\n"
            + result.output[-2000:]
            + "\nserver log tail:\n"
            + target.child.tail()
        )
    return result.seconds


def generate(directory: Path, slices: int) -> list[Path]:
    from dicom_bridge.synthetic import SeriesGeometry, write_series

    return write_series(directory, SeriesGeometry(slices=slices, rows=512, columns=512))


# --- report ----------------------------------------------------------------------------------


def print_table(results: dict[str, Result], slices: int, repeats: int) -> None:
    print(
        f"\n{slices} x 512x512 CT (explicit VR LE), one association, storescu -> target, "
        f"{repeats} pushes per target, interleaved"
    )
    print(f"{'target':<30} {'images/s median':>15} {'[min - max]':>17} {'seconds':>8}")
    for name, res in results.items():
        rates = res.rates(slices)
        print(
            f"{DESCRIPTIONS[name]:<30} {statistics.median(rates):>15.0f} "
            f"{f'[{min(rates):.0f} - {max(rates):.0f}]':>17} "
            f"{statistics.median(res.seconds):>8.3f}"
        )

    def median_rate(name: str) -> float | None:
        res = results.get(name)
        return statistics.median(res.rates(slices)) if res else None

    appliance = median_rate("appliance")
    for ref in ("bare", "storescp"):
        value = median_rate(ref)
        if appliance is not None and value:
            note = " (goal >= 0.90)" if ref == "bare" else ""
            print(f"ratio appliance / {DESCRIPTIONS[ref]}: {appliance / value:.2f}{note}")
    nofsync = median_rate("appliance-nofsync")
    bare = median_rate("bare")
    if nofsync is not None and bare:
        print(f"ratio appliance (fsync off) / {DESCRIPTIONS['bare']}: {nofsync / bare:.2f}")


def json_result(results: dict[str, Result], slices: int, repeats: int) -> dict[str, Any]:
    """The ``--json`` document (keys in ``benchmarks/README.md``)."""

    def spread(values: Sequence[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    targets = {
        name: {"images_per_s": spread(res.rates(slices)), "seconds": spread(res.seconds)}
        for name, res in results.items()
    }
    ratios: dict[str, float] = {}
    for numerator, denominator in (
        ("appliance", "bare"),
        ("appliance", "storescp"),
        ("appliance-nofsync", "bare"),
    ):
        if numerator in targets and denominator in targets:
            ratios[f"{numerator}/{denominator}"] = (
                targets[numerator]["images_per_s"]["median"]
                / targets[denominator]["images_per_s"]["median"]
            )
    return {
        "benchmark": "ingest",
        "slices": slices,
        "repeats": repeats,
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
        "targets": targets,
        "ratios": ratios,
    }


# --- in-process profile of the C-STORE handler ---------------------------------------------


class StageTimer:
    """Collects seconds per call for named stages (one association: one thread at a time)."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)

    def wrap(self, stage: str, func: Callable[..., Any]) -> Callable[..., Any]:
        samples = self.samples[stage]

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                samples.append(time.perf_counter() - start)

        return timed

    def total_ms(self, stage: str) -> float:
        return sum(self.samples.get(stage, ())) * 1e3

    def clear(self) -> None:
        for samples in self.samples.values():
            samples.clear()


def _timed_os(timer: StageTimer) -> types.SimpleNamespace:
    """A stand-in for ``os`` in dicom_bridge.spool: each system call of a write, timed.

    Files and directories are told apart by the ``O_DIRECTORY`` flag of the ``open`` that
    returned the descriptor (``Spool.write`` opens directories only to fsync them).
    """
    proxy = types.SimpleNamespace(**vars(os))
    real_open, real_fsync, real_close = os.open, os.fsync, os.close
    dir_fds: set[int] = set()

    def kind(fd: int) -> str:
        return "dir" if fd in dir_fds else "file"

    def open_(path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        start = time.perf_counter()
        fd = real_open(path, flags, mode, **kwargs)
        elapsed = time.perf_counter() - start
        if flags & os.O_DIRECTORY:
            dir_fds.add(fd)
            timer.samples["dir open"].append(elapsed)
        else:
            timer.samples["file open"].append(elapsed)
        return fd

    def fsync(fd: int) -> None:
        start = time.perf_counter()
        try:
            real_fsync(fd)
        finally:
            timer.samples[f"{kind(fd)} fsync"].append(time.perf_counter() - start)

    def close(fd: int) -> None:
        label = f"{kind(fd)} close"
        dir_fds.discard(fd)
        start = time.perf_counter()
        try:
            real_close(fd)
        finally:
            timer.samples[label].append(time.perf_counter() - start)

    proxy.open = open_
    proxy.fsync = fsync
    proxy.close = close
    proxy.write = timer.wrap("write", os.write)
    proxy.replace = timer.wrap("rename", os.replace)
    return proxy


@contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@dataclass
class ProfileRun:
    fsync: bool
    seconds: float
    timer: StageTimer
    cprofile: str | None


def profile_once(
    files: Sequence[Path], warmup: Sequence[Path], workdir: Path, *, fsync: bool, use_cprofile: bool
) -> ProfileRun:
    """Listener + spool + store in this process, pushed by storescu, each stage timed.

    The stages are the current handler's: ``Listener._handle_store`` → ``_accept``
    (``encode_file_meta_group``, ``_parse_dataset``) → ``_store``
    (``validate_uid``, ``_check_native_pixel_length``, ``Spool.write``, ``describe``, the
    ``on_instance`` callback with its SQLite transaction).
    """
    import uuid

    import dicom_bridge.listener as listener_mod
    import dicom_bridge.spool as spool_mod
    from appliance.flow.ingest import Ingest
    from appliance.ops.logs import configure_logging
    from appliance.store import Store
    from dicom_bridge.listener import Listener, ListenerSettings
    from dicom_bridge.spool import Spool

    configure_logging("WARNING")
    timer = StageTimer()
    root = workdir / "root"
    store = Store(root / "appliance.sqlite3")
    spool = Spool(root / "spool", fsync=fsync)
    ingest = Ingest(store)
    store.record_instance = timer.wrap("sqlite record_instance", store.record_instance)  # type: ignore[method-assign]
    # the listener stages the file (write + fsync) and publishes it (rename + directory
    # fsync) inside the store's transaction; both are the spool's write
    spool.stage = timer.wrap("spool stage", spool.stage)  # type: ignore[method-assign]
    spool._publish = timer.wrap("spool publish", spool._publish)  # type: ignore[method-assign]
    port = free_port()
    listener = Listener(
        ListenerSettings(ae_title=APPLIANCE_AE, bind="127.0.0.1", port=port),
        spool,
        timer.wrap("store callback", ingest.on_instance),
        ingest.on_rejection,
    )
    profiler = cProfile.Profile() if use_cprofile else None
    profiling = threading.Event()  # set after the warm-up push
    handler = timer.wrap("handler (total)", listener._handle_store)
    if profiler is not None:
        inner = handler

        def handler(event: Any) -> Any:
            if not profiling.is_set():
                return inner(event)
            profiler.enable()
            try:
                return inner(event)
            finally:
                profiler.disable()

    listener._handle_store = handler  # type: ignore[method-assign]
    timed_validate_uid = timer.wrap("validate_uid", listener_mod.validate_uid)
    patches = [
        patched(
            listener_mod,
            "encode_file_meta_group",
            timer.wrap("encode_file_meta_group", listener_mod.encode_file_meta_group),
        ),
        patched(
            listener_mod,
            "_parse_dataset",
            timer.wrap("_parse_dataset", listener_mod._parse_dataset),
        ),
        patched(
            listener_mod, "read_dataset", timer.wrap("read_dataset", listener_mod.read_dataset)
        ),
        patched(listener_mod, "validate_uid", timed_validate_uid),
        patched(spool_mod, "validate_uid", timed_validate_uid),
        patched(
            listener_mod,
            "_check_native_pixel_length",
            timer.wrap("pixel length check", listener_mod._check_native_pixel_length),
        ),
        patched(listener_mod, "describe", timer.wrap("describe", listener_mod.describe)),
        patched(spool_mod, "os", _timed_os(timer)),
        patched(spool_mod, "uuid", types.SimpleNamespace(uuid4=timer.wrap("uuid4", uuid.uuid4))),
    ]
    for p in patches:
        p.__enter__()
    try:
        listener.start()
        try:
            if warmup:
                push(port, APPLIANCE_AE, warmup)
            settle()
            timer.clear()
            profiling.set()
            result = push(port, APPLIANCE_AE, files)
        finally:
            listener.stop()
    finally:
        for p in reversed(patches):
            p.__exit__(None, None, None)
        store.close()
    if result.returncode != 0 or result.acknowledged != len(files):
        raise RuntimeError(
            f"profile push: storescu rc {result.returncode}, "
            f"{result.acknowledged} of {len(files)} acknowledged\n" + result.output[-2000:]
        )
    text = None
    if profiler is not None:
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(18)
        text = buffer.getvalue()
    return ProfileRun(fsync, result.seconds, timer, text)


def print_profile(runs: Sequence[ProfileRun], slices: int) -> None:
    """Milliseconds per image for each stage, one column per run."""
    per = float(slices)

    def row(label: str, values: Sequence[float]) -> None:
        print(f"  {label:<48}" + "".join(f"{v:>12.3f}" for v in values))

    def ms(run: ProfileRun, stage: str) -> float:
        return run.timer.total_ms(stage) / per

    def stage(label: str, name: str) -> list[float]:
        values = [ms(r, name) for r in runs]
        row(label, values)
        return values

    def minus(total: Sequence[float], *parts: Sequence[float]) -> list[float]:
        return [t - sum(p) for t, *p in zip(total, *parts, strict=True)]

    print(
        f"\nC-STORE handler, in process (listener + spool + SQLite store), ms per image, "
        f"mean over {slices} images"
    )
    print(
        f"  {'stage':<48}" + "".join(f"{'fsync ' + ('on' if r.fsync else 'off'):>12}" for r in runs)
    )
    wall = [r.seconds * 1e3 / per for r in runs]
    handler = [ms(r, "handler (total)") for r in runs]
    row("wall clock per image (storescu start..exit)", wall)
    row("  outside the handler (network, PDUs, DIMSE)", minus(wall, handler))
    row("  handler (total)", handler)
    encode = stage("    file meta group (packed)", "encode_file_meta_group")
    parse = [ms(r, "_parse_dataset") for r in runs]
    read = [ms(r, "read_dataset") for r in runs]
    row("    _parse_dataset (total)", parse)
    row("      read_dataset(defer_size=4096)", read)
    row("      _touch (4 UIDs converted)", minus(parse, read))
    uids = stage("    validate_uid (x7: request ref, _store, key)", "validate_uid")
    pixel = stage("    _check_native_pixel_length", "pixel length check")
    staged = [ms(r, "spool stage") for r in runs]
    row("    Spool.stage (temporary file, durable)", staged)
    stage_parts = [
        stage("      uuid4() temp name", "uuid4"),
        stage("      open(tmp, O_CREAT | O_EXCL)", "file open"),
        stage("      write (2 chunks)", "write"),
        stage("      fsync(file)", "file fsync"),
        stage("      close(file)", "file close"),
    ]
    row("      rest (path)", minus(staged, *stage_parts))
    describe = stage("    describe()", "describe")
    callback = [ms(r, "store callback") for r in runs]
    sqlite = [ms(r, "sqlite record_instance") for r in runs]
    published = [ms(r, "spool publish") for r in runs]
    row("    store callback (Ingest.on_instance)", callback)
    row("      SQLite record_instance (BEGIN..COMMIT)", sqlite)
    row("        of it: Spool publish (rename + fsync(dir))", published)
    stage("          rename into place", "rename")
    stage("          fsync(directory)", "dir fsync")
    row("      rest (NewInstance)", minus(callback, sqlite))
    row(
        "    rest of the handler",
        minus(handler, encode, parse, uids, pixel, staged, describe, callback),
    )
    row("images/s in this run", [per / r.seconds for r in runs])


# --- the header-only parse against a full read, offline on the same bytes --------------------


def print_offline_parse(files: Sequence[Path]) -> None:
    """Per image: the listener's parse stages, and a full ``dcmread`` for reference."""
    from pydicom import dcmread
    from pydicom.uid import UID

    import dicom_bridge.listener as listener_mod

    metas: list[Any] = []  # the file meta dataset, as event.file_meta gives it
    syntaxes: list[UID] = []
    streams: list[io.BytesIO] = []  # the dataset as pynetdicom holds it (request.DataSet)
    encoded: list[bytes] = []  # the whole file, as written to the spool
    for path in files:
        data = path.read_bytes()
        meta = dcmread(path, stop_before_pixels=True).file_meta
        offset = 132 + 12 + int(meta.FileMetaInformationGroupLength)
        metas.append(meta)
        syntaxes.append(UID(str(meta.TransferSyntaxUID)))
        streams.append(io.BytesIO(data[offset:]))
        encoded.append(data)

    def median_ms(func: Callable[[int], object]) -> float:
        samples = []
        for i in range(len(files)):
            start = time.perf_counter()
            func(i)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples) * 1e3

    def header(i: int) -> bytes:
        meta = metas[i]
        group = listener_mod.encode_file_meta_group(
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
        )
        return b"\x00" * 128 + b"DICM" + group

    def parse(i: int) -> Any:
        return listener_mod._parse_dataset(streams[i], syntaxes[i])

    parsed = [parse(i) for i in range(len(files))]

    def check(i: int) -> None:
        with streams[i].getbuffer() as view:
            listener_mod._check_native_pixel_length(parsed[i], len(view))

    def listener_total(i: int) -> None:
        header(i)
        ds = parse(i)
        with streams[i].getbuffer() as view:
            listener_mod._check_native_pixel_length(ds, len(view))

    def full_walk(i: int) -> None:
        ds = dcmread(io.BytesIO(encoded[i]))
        len(ds)
        for _ in ds.iterall():
            pass

    rows = [
        ("listener: preamble + encode_file_meta_group", median_ms(header)),
        ("listener: _parse_dataset(request.DataSet, ts)", median_ms(parse)),
        ("listener: _check_native_pixel_length", median_ms(check)),
        ("listener: all three (what _accept does before Spool.write)", median_ms(listener_total)),
        (
            "reference: dcmread(BytesIO(file)), pixel data read",
            median_ms(lambda i: dcmread(io.BytesIO(encoded[i]))),
        ),
        ("reference: dcmread + every element converted", median_ms(full_walk)),
    ]
    print(f"\nParsing one image, offline on the same {len(files)} datasets (median ms per image)")
    for label, value in rows:
        print(f"  {label:<60}{value:>8.3f}")


def run_profile(
    files: Sequence[Path], warmup: Sequence[Path], base: Path, *, use_cprofile: bool
) -> None:
    runs = []
    for fsync in (True, False):
        workdir = base / f"profile-{'fsync' if fsync else 'nofsync'}"
        workdir.mkdir()
        runs.append(profile_once(files, warmup, workdir, fsync=fsync, use_cprofile=False))
    print_profile(runs, len(files))
    print_offline_parse(files)
    if use_cprofile:
        workdir = base / "cprofile"
        workdir.mkdir()
        run = profile_once(files, warmup, workdir, fsync=True, use_cprofile=True)
        print(
            "\ncProfile of the C-STORE handler (fsync on), top functions by own "
            f"time ({len(files) / run.seconds:.0f} images/s with the profiler on):"
        )
        print(run.cprofile, flush=True)


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--slices", type=int, default=200, help="images in the series")
    parser.add_argument("--repeats", type=int, default=3, help="pushes per target")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)} (or 'none')",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="slices of a separate series pushed untimed first (0: none)",
    )
    parser.add_argument(
        "--quiet-seconds",
        type=float,
        default=3600.0,
        help="appliance series_quiet_seconds (large: no worker during the push)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also time each stage of the handler in process (fsync on and off)",
    )
    parser.add_argument(
        "--cprofile",
        action="store_true",
        help="with --profile: also print a cProfile of the handler",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="also write the medians and ratios to this file (keys: benchmarks/README.md)",
    )
    args = parser.parse_args(argv)
    names = [] if args.targets == "none" else [t.strip() for t in args.targets.split(",")]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    if args.slices < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--slices and --repeats must be at least 1, --warmup at least 0")
    args.target_names = names
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    program("storescu")
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        base = Path(tmp)
        t0 = time.perf_counter()
        files = generate(base / "series", args.slices)
        warmup = generate(base / "warmup", args.warmup) if args.warmup else []
        size = sum(p.stat().st_size for p in files)
        print(
            f"generated {len(files)} files, {size / 1e6:.1f} MB, "
            f"in {time.perf_counter() - t0:.1f} s; machine: {os.cpu_count()} CPUs, loopback; "
            f"load average {load_average()}",
            flush=True,
        )
        if args.profile:
            # First, while the disk and page cache have seen the least of this run.
            run_profile(files, warmup, base, use_cprofile=args.cprofile)
        results = {name: Result(name) for name in args.target_names}
        for rep in range(args.repeats):
            for name in args.target_names:
                workdir = base / f"{name}-{rep}"
                seconds = run_once(name, workdir, files, warmup, quiet=args.quiet_seconds)
                results[name].seconds.append(seconds)
                print(
                    f"  push {rep + 1}/{args.repeats} {name:<18} {seconds:6.3f} s "
                    f"{len(files) / seconds:7.0f} images/s",
                    flush=True,
                )
                # Received files stay until the end: on ext4 without a journal (this VM)
                # deleting them would slow every later file creation (see README.md).
        if results:
            print_table(results, len(files), args.repeats)
            print(
                f"load average after the pushes: {load_average()} (other work on this "
                "machine skews the figures)"
            )
            if args.json is not None:
                document = json_result(results, len(files), args.repeats)
                args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
