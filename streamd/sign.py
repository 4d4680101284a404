"""``streamd-sign FILE --key KEY --cert-uuid UUID``: sign an image file as Glance verifies it.

Prints the four properties, one ``--property NAME=VALUE`` per line, ready for
``glance image-create $(streamd-sign disk.img --key key.pem --cert-uuid UUID) --file disk.img``
(``--format plain`` prints ``NAME=VALUE`` lines instead). The key type follows from the key:
RSA keys sign with RSA-PSS (MGF1, maximum salt length), EC keys as ECC_<curve>, DSA keys as DSA;
the file is hashed with ``--hash-method`` (SHA-256 by default) as it is read, 4 MiB at a time.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import sys
from typing import Any, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

from .signing import CERT_UUID, HASH_METHOD, HASH_METHODS, KEY_TYPE, KEY_TYPES, SIGNATURE, sign_digest


def key_type_of(private_key: Any) -> str:
    """Glance's img_signature_key_type for this key."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        return "RSA-PSS"
    if isinstance(private_key, dsa.DSAPrivateKey):
        return "DSA"
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        name = f"ECC_{private_key.curve.name.upper()}"
        if name not in KEY_TYPES:
            raise ValueError(f"curve {private_key.curve.name} is not one Glance accepts "
                             f"({', '.join(k for k in KEY_TYPES if k.startswith('ECC_'))})")
        return name
    raise ValueError(f"unsupported key: {type(private_key).__name__}")


def file_digest(path: str, method: str) -> bytes:
    digest = hashlib.new(HASH_METHODS[method][0])
    with open(path, "rb") as handle:
        while chunk := handle.read(4 << 20):
            digest.update(chunk)
    return digest.digest()


def signature_properties(path: str, private_key: Any, cert_uuid: str, method: str = "SHA-256") -> dict[str, str]:
    """The four img_signature* properties of the file at ``path`` signed with ``private_key``."""
    key_type = key_type_of(private_key)
    signature = sign_digest(private_key, file_digest(path, method), method)
    return {SIGNATURE: base64.b64encode(signature).decode(), HASH_METHOD: method, KEY_TYPE: key_type,
            CERT_UUID: cert_uuid}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamd-sign", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="the image file to sign")
    parser.add_argument("--key", required=True, help="private key, PEM (or DER)")
    parser.add_argument("--cert-uuid", required=True,
                        help="id of the certificate with the public key (Barbican secret, or file name in "
                             "[image_signature] certificate_dir)")
    parser.add_argument("--hash-method", default="SHA-256", choices=sorted(HASH_METHODS))
    parser.add_argument("--password-env", metavar="VAR", help="environment variable holding the key's password")
    parser.add_argument("--format", choices=("args", "plain"), default="args",
                        help="args: --property NAME=VALUE lines (default); plain: NAME=VALUE lines")
    args = parser.parse_args(argv)
    password = os.environ[args.password_env].encode() if args.password_env else None
    try:
        with open(args.key, "rb") as handle:
            data = handle.read()
        if data.lstrip().startswith(b"-----"):
            key = serialization.load_pem_private_key(data, password)
        else:
            key = serialization.load_der_private_key(data, password)
        properties = signature_properties(args.file, key, args.cert_uuid, args.hash_method)
    except (OSError, ValueError, TypeError) as exc:
        print(f"streamd-sign: {exc}", file=sys.stderr)
        return 1
    for name, value in properties.items():
        print(f"--property {name}={value}" if args.format == "args" else f"{name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
