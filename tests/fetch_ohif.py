"""Fetch the OHIF viewer the browser tests use (``make ohif``; ``make test`` runs it): the
prebuilt ``@ohif/app`` package from the npm registry, checked against the registry's
sha512 integrity, its ``dist/`` unpacked under ``.cache/`` in the repository. Does nothing
when that release is already there. Run: ``python -m tests.fetch_ohif``."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "3.13.2"
URL = f"https://registry.npmjs.org/@ohif/app/-/app-{VERSION}.tgz"
#: ``npm view @ohif/app@3.13.2 dist.integrity``
INTEGRITY = (
    "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKx"
    "Ffpq+jd5xXZB9E8EA=="
)
#: The tarball is about 50 MB; refuse anything much larger before reading it whole.
MAX_BYTES = 200 * 1024 * 1024
TARGET = Path(__file__).resolve().parents[1] / ".cache" / f"ohif-{VERSION}"


def fetch(target: Path = TARGET) -> Path:
    """Unpack the release's ``dist/`` to ``target/dist`` (once); return that folder."""
    dist = target / "dist"
    if (target / "complete").is_file():
        return dist
    with urllib.request.urlopen(URL, timeout=120) as response:
        length = int(response.headers.get("Content-Length") or 0)
        if length > MAX_BYTES:
            raise SystemExit(f"{URL}: {length} bytes, more than the {MAX_BYTES} allowed")
        data = response.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise SystemExit(f"{URL}: more than the {MAX_BYTES} bytes allowed")
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != INTEGRITY:
        raise SystemExit(f"{URL}: integrity {digest} is not the registry's {INTEGRITY}")
    shutil.rmtree(target, ignore_errors=True)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        members = [m for m in archive.getmembers() if m.name.startswith("package/dist/")]
        archive.extractall(staging, members=members, filter="data")
    staging.joinpath("package", "dist").rename(staging / "dist")
    shutil.rmtree(staging / "package")
    (staging / "complete").write_text(f"{URL}\n{INTEGRITY}\n")
    staging.rename(target)
    return dist


if __name__ == "__main__":
    print(f"OHIF {VERSION}: {fetch()}", file=sys.stderr)
