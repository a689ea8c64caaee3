"""A small test/trial PKI on the openssl command line: CA, broker and per-vehicle certificates, revocation, CRL.

See `mint.py` (the work) and `python -m tools.pki --help` (the command line). Not for production keys: the CA
key sits unencrypted next to the certificates it signs.
"""

from .mint import Pki

__all__ = ["Pki"]
