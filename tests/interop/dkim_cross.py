#!/usr/bin/env python3
"""DKIM interop with dkimpy (issue 14), driven by tests/tests/interop_dkim.rs.

  dkim_cross.py verify RECORDS.json MESSAGE
      Verifies every DKIM-Signature of MESSAGE, the DNS answered from
      RECORDS.json ({"<selector>._domainkey.<domain>": "v=DKIM1; ..."});
      prints one line per signature: "pass" or "fail".
  dkim_cross.py sign ALGORITHM SELECTOR DOMAIN KEYFILE CANON MESSAGE
      Prints the DKIM-Signature field dkimpy makes for MESSAGE with the key
      in KEYFILE (PKCS#8 PEM for rsa-sha256, the base64 seed for
      ed25519-sha256), CANON/CANON canonicalisation.
"""
import json
import sys

import dkim


def verify(records_file, message_file):
    with open(records_file) as f:
        records = json.load(f)
    with open(message_file, "rb") as f:
        message = f.read()

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        value = records.get(name.rstrip("."))
        return value.encode() if value is not None else None

    checker = dkim.DKIM(message)
    count = sum(
        1
        for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        if line.lower().startswith(b"dkim-signature:")
    )
    for i in range(count):
        print("pass" if checker.verify(idx=i, dnsfunc=dnsfunc) else "fail")


def sign(algorithm, selector, domain, key_file, canon, message_file):
    with open(key_file, "rb") as f:
        key = f.read().strip()
    with open(message_file, "rb") as f:
        message = f.read()
    signature = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        key,
        canonicalize=(canon.encode(), canon.encode()),
        signature_algorithm=algorithm.encode(),
        include_headers=[b"from", b"to", b"subject", b"date"],
    )
    sys.stdout.buffer.write(signature)


if __name__ == "__main__":
    if sys.argv[1] == "verify":
        verify(*sys.argv[2:4])
    elif sys.argv[1] == "sign":
        sign(*sys.argv[2:8])
    else:
        sys.exit("usage: dkim_cross.py verify|sign ...")
