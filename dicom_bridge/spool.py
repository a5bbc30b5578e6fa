"""The spool: received instances written atomically to disk, named by validated UIDs.

Layout: ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.
A write goes to ``<root>/.tmp/`` first, is fsync'd, then renamed into place, and the
directory entry is fsync'd, so a file that exists under its final name is complete.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dicom_bridge.errors import SpoolError
from dicom_bridge.uids import validate_uid

SUFFIX = ".dcm"


@dataclass(frozen=True, slots=True)
class SpoolKey:
    """The three UIDs that place an instance in the spool (validated on construction)."""

    study_uid: str
    series_uid: str
    sop_uid: str

    def __post_init__(self) -> None:
        # Keep the validated (trimmed) values: once a key exists, it is safe to name files.
        for name, what in (
            ("study_uid", "StudyInstanceUID"),
            ("series_uid", "SeriesInstanceUID"),
            ("sop_uid", "SOPInstanceUID"),
        ):
            object.__setattr__(self, name, validate_uid(getattr(self, name), what=what))


class Spool:
    """Atomic, durable file storage for received instances."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()

    def path_for(self, key: SpoolKey) -> Path:
        return self.root / key.study_uid / key.series_uid / f"{key.sop_uid}{SUFFIX}"

    def write(self, key: SpoolKey, chunks: tuple[bytes | memoryview, ...]) -> Path:
        """Write ``chunks`` as one file for ``key``; return its final path.

        Raises :class:`SpoolError` when the bytes cannot be made durable; then no file
        exists under the final name (an earlier copy, if any, is left untouched).
        Whether an earlier copy may be replaced is the caller's decision: the listener
        uses :meth:`stage` and publishes only what the store accepted.
        """
        staged = self.stage(key, chunks)
        try:
            return staged.publish()
        finally:
            staged.discard()

    def stage(self, key: SpoolKey, chunks: tuple[bytes | memoryview, ...]) -> StagedFile:
        """Write ``chunks`` durably to a temporary file under ``.tmp/``; nothing appears
        under the final name until :meth:`StagedFile.publish`. Raises :class:`SpoolError`."""
        tmp = self._tmp / f"{key.sop_uid}.{uuid.uuid4().hex}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except (OSError, TypeError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            raise _spool_error(exc) from exc
        return StagedFile(self, key, tmp)

    def _publish(self, staged: StagedFile) -> Path:
        final = self.path_for(staged.key)
        try:
            directory = final.parent
            if directory not in self._known_dirs:
                directory.mkdir(parents=True, exist_ok=True)
                if self.fsync:
                    _fsync_dir(directory.parent)
                    _fsync_dir(directory.parent.parent)
                self._known_dirs.add(directory)
            os.replace(staged.tmp, final)
            if self.fsync:
                _fsync_dir(directory)
        except OSError as exc:
            raise _spool_error(exc) from exc
        return final

    def remove_partials(self) -> int:
        """Delete temporary files left by a crash (never acknowledged). Return how many."""
        count = 0
        for item in self._tmp.iterdir():
            item.unlink(missing_ok=True)
            count += 1
        return count

    def iter_files(self) -> Iterator[Path]:
        """Every complete instance file in the spool."""
        for study in self.root.iterdir():
            if study.name.startswith(".") or not study.is_dir():
                continue
            for series in study.iterdir():
                if series.is_dir():
                    yield from series.glob(f"*{SUFFIX}")


class StagedFile:
    """A complete, durable file in ``.tmp/`` waiting for the decision to keep it.

    :meth:`publish` renames it to its final name (once); :meth:`discard` removes it
    unless it was published. Use both: publish when accepted, discard in ``finally``.
    """

    def __init__(self, spool: Spool, key: SpoolKey, tmp: Path) -> None:
        self.key = key
        self.tmp = tmp
        self.final = spool.path_for(key)
        self._spool = spool
        self._published = False

    @property
    def published(self) -> bool:
        return self._published

    def publish(self) -> Path:
        """Move the file to its final name (replacing any file there); return that path."""
        if not self._published:
            self._spool._publish(self)
            self._published = True
        return self.final

    def discard(self) -> None:
        if not self._published:
            self.tmp.unlink(missing_ok=True)


def _spool_error(exc: Exception) -> SpoolError:
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return SpoolError(f"could not write instance to spool: {detail}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
