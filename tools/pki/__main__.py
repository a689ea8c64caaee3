"""python -m tools.pki: mint a test/trial PKI for mTLS between vehicles, broker and backend.

    python -m tools.pki init DIR                          CA (ca.key, ca.crt) and an empty CRL
    python -m tools.pki server DIR NAME [--dns H]... [--ip A]...   broker certificate
    python -m tools.pki client DIR CN [--name N] [--days D] [--expired]   vehicle (CN = VIN) or backend
    python -m tools.pki revoke DIR NAME                   revoke and rewrite crl.pem
"""

from __future__ import annotations

import argparse
import sys

from .mint import Pki, PkiError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.pki", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("init", help="create the CA")
    p.add_argument("dir")
    p.add_argument("--cn", default="icvq test CA")
    p.add_argument("--days", type=int, default=3650)
    p = sub.add_parser("server", help="issue a broker certificate")
    p.add_argument("dir")
    p.add_argument("name")
    p.add_argument("--dns", action="append", help="DNS name (repeatable; default localhost)")
    p.add_argument("--ip", action="append", help="IP address (repeatable; default 127.0.0.1)")
    p.add_argument("--days", type=int, default=825)
    p = sub.add_parser("client", help="issue a client certificate (a vehicle: CN = its vehicle id)")
    p.add_argument("dir")
    p.add_argument("cn")
    p.add_argument("--name", default="", help="file name (default: the CN)")
    p.add_argument("--days", type=int, default=825)
    p.add_argument("--expired", action="store_true", help="validity ended in 2020 (for tests)")
    p = sub.add_parser("revoke", help="revoke a certificate and rewrite crl.pem")
    p.add_argument("dir")
    p.add_argument("name")
    args = ap.parse_args(argv)
    pki = Pki(args.dir)
    try:
        if args.cmd == "init":
            pki.init(args.cn, args.days)
            print(pki.ca_cert)
        elif args.cmd == "server":
            got = pki.server(args.name, tuple(args.dns or ("localhost",)), tuple(args.ip or ("127.0.0.1",)),
                             args.days)
            print(got.cert, got.key)
        elif args.cmd == "client":
            got = pki.client(args.cn, args.name, args.days, args.expired)
            print(got.cert, got.key)
        else:
            print(pki.revoke(args.name))
    except PkiError as e:
        print(f"pki: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
