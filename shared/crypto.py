"""Phone numbers encrypted at rest: AES-256-GCM, plus a keyed hash to find them.

A column of type :class:`EncryptedPhone` stores ``v1:<base64url(nonce | ciphertext)>``
and hands the code the plain number, so queries and rows look as before; only
an equality search cannot work on it (every encryption differs), so tables keep
a ``phone_hash`` column (:func:`phone_hash`, HMAC-SHA256) for that.

Both keys are derived from one 32-byte key, ``OUTREACH_PHONE_KEY`` (base64).
The key is process-wide (``use_phone_key``, called by the outreach app with its
settings): a column type has no other way to reach it. Without a call, the
development key is used, which production settings refuse.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

# Base64 that reads as what it is, so it stands out in a manifest or a .env file.
DEV_PHONE_KEY = "devPhoneKeyForDevelopmentOnlyNeverProductik="
"""The development key (32 bytes, base64); refused with ``ENVIRONMENT=production``."""

PREFIX = "v1:"
# Bound into every ciphertext: a value copied into another column does not decrypt.
_AAD = b"churnwatch phone v1"


def decode_key(value: str) -> bytes:
    """The 32 raw bytes of a base64 key; ValueError if it is not that."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("OUTREACH_PHONE_KEY must be base64") from exc
    if len(raw) != 32:
        raise ValueError(f"OUTREACH_PHONE_KEY must be 32 bytes (base64), not {len(raw)}")
    return raw


class PhoneCipher:
    """Encrypts, decrypts and hashes phone numbers with keys derived from one master key."""

    def __init__(self, master: bytes) -> None:
        # Two keys from one: the hash must not be computable from the cipher key's use.
        self._aead = AESGCM(hmac.digest(master, b"churnwatch phone encryption", hashlib.sha256))
        self._mac_key = hmac.digest(master, b"churnwatch phone lookup", hashlib.sha256)

    def encrypt(self, phone: str) -> str:
        """``v1:`` and the base64url of a fresh 96-bit nonce and the AES-GCM ciphertext."""
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, phone.encode(), _AAD)
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def decrypt(self, stored: str) -> str:
        """The phone number; a value without the prefix is returned as is (a legacy row)."""
        if not stored.startswith(PREFIX):
            return stored
        blob = base64.urlsafe_b64decode(stored[len(PREFIX) :])
        try:
            return self._aead.decrypt(blob[:12], blob[12:], _AAD).decode()
        except InvalidTag as exc:
            # A wrong OUTREACH_PHONE_KEY: say so, never print the value.
            raise ValueError("a phone number does not decrypt: wrong OUTREACH_PHONE_KEY?") from exc

    def hash(self, phone: str) -> str:
        """Hex HMAC-SHA256 of the number: equal numbers, equal hashes; not reversible."""
        return hmac.new(self._mac_key, phone.encode(), hashlib.sha256).hexdigest()


_cipher = PhoneCipher(decode_key(DEV_PHONE_KEY))


def use_phone_key(key: str) -> None:
    """Use this base64 key from now on in this process (the outreach app's start)."""
    global _cipher
    _cipher = PhoneCipher(decode_key(key))


def phone_cipher() -> PhoneCipher:
    """The process's cipher."""
    return _cipher


def phone_hash(phone: str | None) -> str | None:
    """The lookup hash of a number (None for None)."""
    return None if phone is None else _cipher.hash(phone)


class EncryptedPhone(TypeDecorator[str]):
    """A ``TEXT`` column that holds phone numbers encrypted; the code sees them plain."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        """Encrypt on the way in (an already encrypted value is kept as it is)."""
        if value is None or value.startswith(PREFIX):
            return value
        return _cipher.encrypt(value)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> str | None:
        """Decrypt on the way out."""
        return None if value is None else _cipher.decrypt(str(value))
