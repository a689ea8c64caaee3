"""Mint a CA, a broker certificate and per-vehicle client certificates with the `openssl` command line.

Why openssl and not Python: the `cryptography` package is not an agent dependency and the CLI is on every
machine that runs mosquitto; `openssl ca` also keeps the index that revocation and CRLs need. Keys are EC
P-256 (generating one takes ~5 ms against ~100 ms for RSA-2048, and every broker and client here speaks it).

Layout of a PKI directory (all private keys 0600, whatever the umask):
    ca.key ca.crt openssl.cnf index.txt serial crlnumber crl.pem   the CA and its bookkeeping
    <name>.key <name>.crt                                           one pair per broker or client
A client certificate's Common Name is the identity the broker sees: with mosquitto's
`use_identity_as_username true` it becomes the username that the ACL's `%u` stands for, so a vehicle's
certificate carries its vehicle id (the VIN) as CN.

No threads; every call runs openssl to completion.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

CNF = """\
[ ca ]
default_ca = icvq_ca

[ icvq_ca ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/issued
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = $dir/ca.crt
private_key = $dir/ca.key
default_md = sha256
default_crl_days = {crl_days}
policy = policy_cn
unique_subject = no
copy_extensions = none

[ policy_cn ]
commonName = supplied
"""

SERVER_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = {san}
"""

CLIENT_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


class PkiError(RuntimeError):
    """openssl failed; the message carries its stderr."""


@dataclass(frozen=True)
class Issued:
    name: str
    cert: Path
    key: Path


class Pki:
    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)

    # ---------------------------------------------------------------------------------------------- CA
    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def crl(self) -> Path:
        return self.dir / "crl.pem"

    def init(self, cn: str = "icvq test CA", days: int = 3650, crl_days: int = 30) -> Pki:
        """Create the CA (key, self-signed certificate, index) and an empty CRL. Refuses an existing CA."""
        if self.ca_cert.exists():
            raise PkiError(f"{self.ca_cert} exists: one CA per directory")
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        (self.dir / "issued").mkdir(exist_ok=True)
        (self.dir / "openssl.cnf").write_text(CNF.format(dir=self.dir.resolve(), crl_days=crl_days))
        (self.dir / "index.txt").write_text("")
        (self.dir / "serial").write_text("1000\n")
        (self.dir / "crlnumber").write_text("1000\n")
        self._newkey("ca")
        self._openssl("req", "-x509", "-new", "-key", "ca.key", "-out", "ca.crt", "-days", str(days),
                      "-subj", f"/CN={cn}", "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self.gencrl()
        return self

    # ------------------------------------------------------------------------------------------ leaves
    def server(self, name: str, dns: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",),
               days: int = 825) -> Issued:
        """A broker certificate; the agent checks the host it dials against these names."""
        san = ", ".join([f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips])
        return self._issue(name, dns[0] if dns else name, SERVER_EXT.format(san=san), days=days)

    def client(self, cn: str, name: str = "", days: int = 825, expired: bool = False) -> Issued:
        """A client certificate with Common Name `cn` (a vehicle: its VIN). `expired=True` makes one whose
        validity ended in 2020, for tests that the broker refuses it."""
        dates = ("20200101000000Z", "20200102000000Z") if expired else None
        return self._issue(name or cn, cn, CLIENT_EXT, days=days, dates=dates)

    def revoke(self, name: str) -> Path:
        """Revoke `name`'s certificate and rewrite the CRL; returns the CRL's path."""
        self._openssl("ca", "-batch", "-config", "openssl.cnf", "-revoke", f"{name}.crt", "-crl_reason",
                      "keyCompromise")
        return self.gencrl()

    def gencrl(self) -> Path:
        self._openssl("ca", "-batch", "-config", "openssl.cnf", "-gencrl", "-out", "crl.pem")
        return self.crl

    # ---------------------------------------------------------------------------------------- helpers
    def _issue(self, name: str, cn: str, ext: str, days: int, dates: tuple[str, str] | None = None) -> Issued:
        if not name or "/" in name or name.startswith(".") or name in ("ca", "crl"):
            raise PkiError(f"bad certificate name {name!r}")
        key = self._newkey(name)
        csr = self.dir / f"{name}.csr"
        extfile = self.dir / f"{name}.ext"
        extfile.write_text(ext)
        self._openssl("req", "-new", "-key", key.name, "-out", csr.name, "-subj", f"/CN={cn}")
        validity = ["-startdate", dates[0], "-enddate", dates[1]] if dates else ["-days", str(days)]
        self._openssl("ca", "-batch", "-notext", "-config", "openssl.cnf", "-in", csr.name, "-out",
                      f"{name}.crt", "-extfile", extfile.name, *validity)
        csr.unlink()
        extfile.unlink()
        return Issued(name, self.dir / f"{name}.crt", key)

    def _newkey(self, name: str) -> Path:
        key = self.dir / f"{name}.key"
        # Created 0600 before openssl writes into it, so the key is never readable by others, whatever the umask.
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        os.close(fd)
        self._openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key.name)
        return key

    def _openssl(self, *args: str) -> None:
        r = subprocess.run(["openssl", *args], cwd=self.dir, capture_output=True, text=True)
        if r.returncode != 0:
            raise PkiError(f"openssl {args[0]} failed: {r.stderr.strip()}")
