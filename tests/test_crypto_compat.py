"""Phone values sealed by earlier releases still open: the key derivation is pinned.

shared/crypto.py derives its three subkeys as HMAC-SHA256(PHONE_KEY, label).
Moving to HKDF (``cryptography``'s) was considered and not done (docs/security.md,
"Key derivation"): it would change every key id, AES key and lookup hash, so
stored and in-flight values would stop opening. These vectors were sealed by the
release before that decision; if a change to the derivation makes one fail,
existing deployments' data would no longer read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from shared.crypto import PhoneKeyring, key_id_of

KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # bytes 0..31
KEY_ID = "8808c121"
SEALED_V2 = "v2:8808c121:j8YujB3fXMWeQQsCpeNCe_QPr5xpeEPsH3ZD21kvTraKfwJyk0ynFig="
SEALED_V1 = "v1:AAAAAAAAAAAAAAAA-xefAEgfymSsH_3IbByY0Zw315pOzTZq9G2LnQ=="
HASH = "9c0a5378a8f667de6d0e082c20bdb6c4246c4ec74d7ef9ec41765f9e168316af"
OTHER_KEY = base64.b64encode(bytes(range(32, 64))).decode()


def test_values_sealed_by_the_earlier_release_still_open() -> None:
    ring = PhoneKeyring.from_base64(KEY)
    assert ring.current.key_id == KEY_ID
    assert ring.decrypt(SEALED_V2) == "+447700900123"
    assert ring.decrypt(SEALED_V1) == "+15550001234"
    # The indexed lookup hash of stored rows is unchanged, so inbound replies find them.
    assert ring.hash("+447700900123") == HASH
    # After a rotation the old key, now in PHONE_OLD_KEYS, still opens them and reseals.
    rotated = PhoneKeyring.from_base64(OTHER_KEY, [KEY])
    assert rotated.decrypt(SEALED_V2) == "+447700900123"
    assert HASH in rotated.hashes("+447700900123")
    resealed = rotated.reseal(SEALED_V2)
    assert resealed is not None and key_id_of(resealed) == rotated.current.key_id
    assert rotated.decrypt(resealed) == "+447700900123"


def test_hkdf_would_have_changed_every_derived_value() -> None:
    """Why the derivation was kept: HKDF's subkeys differ from the stored ones."""
    master = base64.b64decode(KEY)

    def hkdf(label: bytes) -> bytes:
        return HKDFExpand(algorithm=hashes.SHA256(), length=32, info=label).derive(master)

    assert hkdf(b"churnwatch phone key id")[:4].hex() != KEY_ID
    lookup = hmac.new(hkdf(b"churnwatch phone lookup"), b"+447700900123", hashlib.sha256)
    assert lookup.hexdigest() != HASH
    blob = base64.urlsafe_b64decode(SEALED_V2.split(":", 2)[2])
    aad = b"churnwatch phone v2:" + KEY_ID.encode()
    with pytest.raises(InvalidTag):
        AESGCM(hkdf(b"churnwatch phone encryption")).decrypt(blob[:12], blob[12:], aad)
