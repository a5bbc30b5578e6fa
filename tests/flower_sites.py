"""What the Flower interop tests share: certificates and SuperNode keys (made here,
never downloaded), the phantom sites' node config, and the tiny run they all start."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.federation.settings import RunSettings


def phantom_node_config(site: str, state_dir: Path) -> dict[str, Any]:
    """A SuperNode's ``node_config`` for preset ``site`` with two tiny phantom cases."""
    return {
        "site-name": site,
        "state-dir": str(state_dir),
        "phantom-preset": site,
        "phantom-cases": 2,
        "phantom-matrix": "28,36,36",
        "phantom-spacing": "6,6,6",
    }


def tiny_run(strategy: str, output: Path, **overrides: Any) -> RunSettings:
    """A run of a tiny glioma network on the phantom sites: 2 rounds, 2 local steps,
    no evaluation (``overrides`` replace any of these)."""
    from appliance.config import StrategyName
    from appliance.federation.settings import RunSettings

    values: dict[str, Any] = {
        "strategy": StrategyName(strategy),
        "rounds": 2,
        "min_sites": 3,
        "task": "glioma_mr",
        "local_steps": 2,
        "batch_size": 2,
        "lr": 1e-2,
        "seed": 5,
        "evaluate": False,
        "net_filters": (4, 8),
        "net_res_units": 0,
        "patch_size": (16, 16, 16),
        "target_spacing": (5.0, 5.0, 5.0),
        "output_dir": str(output),
        "timeout_s": 600.0,
    }
    return RunSettings(**(values | overrides))


def write_pki(directory: Path, sites: Sequence[str]) -> dict[str, Path]:
    """A CA, a SuperLink certificate for 127.0.0.1/localhost, and one EC P-384 key pair
    per SuperNode of ``sites`` (both in OpenSSH format, as Flower reads them): keys
    ``ca``, ``cert``, ``key``, ``<site>.key``, ``<site>.pub``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "appliance test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    out = {
        "ca": directory / "ca.crt",
        "cert": directory / "server.pem",
        "key": directory / "server.key",
    }
    out["ca"].write_bytes(ca_cert.public_bytes(pem))
    out["cert"].write_bytes(cert.public_bytes(pem))
    out["key"].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    for site in sites:
        node_key = ec.generate_private_key(ec.SECP384R1())
        out[f"{site}.key"] = directory / f"{site}.key"
        out[f"{site}.pub"] = directory / f"{site}.pub"
        out[f"{site}.key"].write_bytes(
            node_key.private_bytes(
                pem, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
        )
        out[f"{site}.pub"].write_bytes(
            node_key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
        )
    return out
