"""Phone numbers encrypted wherever they rest or travel: AES-256-GCM under a keyring.

A sealed phone reads ``v2:<key id>:<base64url(nonce | ciphertext)>``. The key id
(8 hex digits, derived from the key, so it can never disagree with it) says
which key of the :class:`PhoneKeyring` opens it: the *current* key seals every
new value, older keys stay in the ring only to read values sealed before a
rotation (docs/security.md, "Phone numbers"). ``v1:<...>`` values (no key id,
written before the keyring) are still read, by trying each key.

Where phones are:

* on Kafka, a profile event's ``payload.phone`` and a task's ``phone`` are sealed
  (:func:`sealed_event_json`, called by ingest as it produces); consumers see an
  opaque :data:`SealedPhone`; only outreach opens it, to send an SMS;
* at rest, ``outreach.tasks.phone`` is an :class:`EncryptedPhone` column (the code
  sees the plain number) with a keyed hash beside it for equality lookups
  (:func:`phone_hash`, HMAC-SHA256); ``alerting.subscribers.phone`` keeps the
  sealed value as it came off Kafka (alerting has no key and needs none).

The keys come from the settings (:class:`PhoneKeySettings`: ``PHONE_KEY``, alias
``OUTREACH_PHONE_KEY``, and ``PHONE_OLD_KEYS``) and are made process-wide by the
app's start (:func:`use_phone_keyring`): a column type has no other way to reach
them. Without a call, the development key is used, which production refuses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import AliasChoices, BaseModel, Field, SecretStr, StringConstraints, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

# Base64 that reads as what it is, so it stands out in a manifest or a .env file.
DEV_PHONE_KEY = "devPhoneKeyForDevelopmentOnlyNeverProductik="
"""The development key (32 bytes, base64); refused with ``ENVIRONMENT=production``."""

PREFIX = "v1:"
"""Values sealed before the keyring (no key id); still read, never written."""
SEALED_PREFIX = "v2:"
"""Every value sealed now starts with this."""
ENCRYPTED_PREFIXES = (PREFIX, SEALED_PREFIX)
"""A stored value starting with one of these is encrypted, anything else is plain."""

SEALED_PATTERN = r"^v2:[0-9a-f]{8}:[A-Za-z0-9_-]{40,120}={0,2}$"
"""A sealed phone: the prefix, the key id, the base64url of a nonce and ciphertext."""

SealedPhone = Annotated[str, StringConstraints(pattern=SEALED_PATTERN)]
"""A phone number sealed by :meth:`PhoneKeyring.encrypt`; opaque to all but outreach."""

KEY_SETTING = "PHONE_KEY (or OUTREACH_PHONE_KEY)"
"""How errors name the current key's setting (both spellings, for the old one's users)."""

# Bound into every ciphertext: a value copied into another kind of column does not decrypt.
_AAD_V1 = b"churnwatch phone v1"
_AAD_V2 = b"churnwatch phone v2:"
_SEALED = re.compile(SEALED_PATTERN)


class UnknownPhoneKey(ValueError):
    """A value sealed under a key id that is in neither ``PHONE_KEY`` nor ``PHONE_OLD_KEYS``."""


def decode_key(value: str, setting: str = KEY_SETTING) -> bytes:
    """The 32 raw bytes of a base64 key; ValueError (naming ``setting``) if it is not that."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{setting} must be base64") from exc
    if len(raw) != 32:
        raise ValueError(f"{setting} must be 32 bytes (base64), not {len(raw)}")
    return raw


def is_sealed(value: str) -> bool:
    """True if ``value`` has the form of a sealed phone (says nothing of its key)."""
    return _SEALED.match(value) is not None


def is_encrypted(value: str) -> bool:
    """True for a sealed value or a pre-keyring ``v1:`` value: not a plain number."""
    return value.startswith(ENCRYPTED_PREFIXES)


def key_id_of(value: str) -> str | None:
    """The key id of a sealed value (None for a plain or ``v1:`` value)."""
    return value.split(":", 2)[1] if is_sealed(value) else None


class PhoneCipher:
    """One key: seals, opens and hashes phone numbers with keys derived from it."""

    def __init__(self, master: bytes) -> None:
        # Three keys from one: the hash and the id must not be computable from the cipher's use.
        # HMAC-SHA256(key, label) is a sound KDF here: the key is 32 uniformly random
        # bytes (decode_key), so HKDF's extract step has nothing to do, and its expand
        # step for one block is this HMAC with a counter byte. Kept rather than moved to
        # HKDF: that would change every key id, AES key and lookup hash, so stored and
        # in-flight values would stop opening (docs/security.md, "Key derivation";
        # tests/test_crypto_compat.py pins them).
        self._aead = AESGCM(hmac.digest(master, b"churnwatch phone encryption", hashlib.sha256))
        self._mac_key = hmac.digest(master, b"churnwatch phone lookup", hashlib.sha256)
        self.key_id = hmac.digest(master, b"churnwatch phone key id", hashlib.sha256)[:4].hex()
        """8 hex digits naming this key in every value it seals."""

    def encrypt(self, phone: str) -> str:
        """``v2:<key id>:`` and the base64url of a fresh 96-bit nonce and the ciphertext."""
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, phone.encode(), _AAD_V2 + self.key_id.encode())
        return f"{SEALED_PREFIX}{self.key_id}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, stored: str) -> str:
        """The phone number in a value this key sealed (``v2:`` or ``v1:``).

        A plain value is returned as is (a row from before encryption); a value
        another key sealed is a ValueError that never quotes the value.
        """
        if stored.startswith(SEALED_PREFIX):
            _, key_id, data = stored.split(":", 2)
            aad = _AAD_V2 + key_id.encode()
        elif stored.startswith(PREFIX):
            data, aad = stored[len(PREFIX) :], _AAD_V1
        else:
            return stored
        try:
            blob = base64.urlsafe_b64decode(data)
            return self._aead.decrypt(blob[:12], blob[12:], aad).decode()
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise ValueError(f"a phone number does not decrypt: wrong {KEY_SETTING}?") from exc

    def hash(self, phone: str) -> str:
        """Hex HMAC-SHA256 of the number: equal numbers, equal hashes; not reversible."""
        return hmac.new(self._mac_key, phone.encode(), hashlib.sha256).hexdigest()


class PhoneKeyring:
    """The current key, which seals, and older keys, which only open what they sealed."""

    def __init__(self, current: bytes, older: Iterable[bytes] = ()) -> None:
        self.current = PhoneCipher(current)
        self._keys = {self.current.key_id: self.current}
        for raw in older:
            cipher = PhoneCipher(raw)
            self._keys.setdefault(cipher.key_id, cipher)

    @classmethod
    def from_base64(cls, current: str, older: Iterable[str] = ()) -> Self:
        """A keyring from base64 keys as the settings hold them."""
        return cls(
            decode_key(current), [decode_key(k, "each of PHONE_OLD_KEYS") for k in older if k]
        )

    @property
    def key_ids(self) -> list[str]:
        """Every key id the ring opens, the current one first."""
        return list(self._keys)

    def encrypt(self, phone: str) -> str:
        """Seal ``phone`` under the current key."""
        return self.current.encrypt(phone)

    def decrypt(self, stored: str) -> str:
        """The number in a sealed, ``v1:`` or plain value.

        ``v2:`` names its key: one not in the ring raises :class:`UnknownPhoneKey`.
        ``v1:`` names none: each key is tried, current first.
        """
        if stored.startswith(SEALED_PREFIX):
            key_id = key_id_of(stored)
            cipher = self._keys.get(key_id or "")
            if cipher is None:
                raise UnknownPhoneKey(
                    f"a phone number is sealed under key id {key_id!r}, which is neither "
                    f"{KEY_SETTING} ({self.current.key_id}) nor in PHONE_OLD_KEYS "
                    f"({', '.join(self.key_ids[1:]) or 'empty'}): add that key to PHONE_OLD_KEYS"
                )
            return cipher.decrypt(stored)
        if stored.startswith(PREFIX):
            for cipher in self._keys.values():
                try:
                    return cipher.decrypt(stored)
                except ValueError:
                    continue
            raise ValueError(f"a v1 phone number opens under no key: {KEY_SETTING}, PHONE_OLD_KEYS")
        return stored

    def reseal(self, stored: str) -> str | None:
        """``stored`` sealed under the current key, or None if it already is."""
        if key_id_of(stored) == self.current.key_id:
            return None
        return self.encrypt(self.decrypt(stored))

    def hash(self, phone: str) -> str:
        """The lookup hash under the current key (what new rows store)."""
        return self.current.hash(phone)

    def hashes(self, phone: str) -> list[str]:
        """The lookup hash under every key: rows not yet re-keyed are found too."""
        return [cipher.hash(phone) for cipher in self._keys.values()]


class PhoneKeySettings(BaseSettings):
    """The phone keys, as settings: mixed into ingest's and outreach's, alone in tools.

    A service adds it as its first base (``class IngestSettings(PhoneKeySettings,
    BaseServiceSettings)``, so the common production checks speak first); a
    migration builds it alone, needing no broker or database settings.
    """

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    environment: Literal["development", "test", "production"] = "development"

    phone_key: SecretStr = Field(
        default=SecretStr(DEV_PHONE_KEY),
        validation_alias=AliasChoices("phone_key", "outreach_phone_key"),
        description="32 bytes, base64: seals every phone number (on Kafka and at rest). "
        "OUTREACH_PHONE_KEY is the older name, still read.",
    )
    phone_old_keys: SecretStr = Field(
        default=SecretStr(""),
        description="Comma-separated base64 keys that only open values sealed before a "
        "rotation (churnwatch phone-keys rotate moves them to PHONE_KEY).",
    )

    @model_validator(mode="after")
    def _phone_keys_are_keys(self) -> Self:
        self.phone_keyring()  # ValueError names the setting, never the value
        if (
            self.environment == "production"
            and self.phone_key.get_secret_value().strip() == DEV_PHONE_KEY
        ):
            raise ValueError(f"ENVIRONMENT=production needs an explicit {KEY_SETTING}")
        return self

    def phone_keyring(self) -> PhoneKeyring:
        """The keyring these settings describe."""
        older = self.phone_old_keys.get_secret_value().split(",")
        return PhoneKeyring.from_base64(
            self.phone_key.get_secret_value(), [k.strip() for k in older]
        )


_keyring = PhoneKeyring(decode_key(DEV_PHONE_KEY))


def use_phone_keyring(keyring: PhoneKeyring) -> None:
    """Use this keyring from now on in this process (an app's start, with its settings)."""
    global _keyring
    _keyring = keyring


def use_phone_key(key: str, older: Iterable[str] = ()) -> None:
    """Use these base64 keys from now on in this process."""
    use_phone_keyring(PhoneKeyring.from_base64(key, older))


def phone_keyring() -> PhoneKeyring:
    """The process's keyring."""
    return _keyring


def phone_hash(phone: str | None) -> str | None:
    """The lookup hash of a number under the current key (None for None)."""
    return None if phone is None else _keyring.hash(phone)


def open_phone(stored: str | None) -> str | None:
    """The plain number in a sealed (or plain) value, with the process's keyring."""
    return None if stored is None else _keyring.decrypt(stored)


def model_phone(model: BaseModel) -> Any:
    """The model's ``phone`` field, or None when its type has none.

    Not ``getattr(model, "phone", None)``: on a model without the field that goes
    through pydantic's ``__getattr__`` and builds an AttributeError with its
    message, which profiled at 8 % of ingest's time for NDJSON batches.
    """
    return model.__dict__.get("phone")  # pydantic keeps the fields' values in __dict__


def sealed_event_json(event: BaseModel) -> bytes:
    """The JSON of an event as it goes on Kafka: a plain ``payload.phone`` sealed.

    Ingest calls this for every event it produces, after validating the plain
    number. Events without a phone are serialised as they are.
    """
    payload = getattr(event, "payload", None)
    phone = model_phone(payload) if isinstance(payload, BaseModel) else None
    if isinstance(payload, BaseModel) and isinstance(phone, str) and not is_encrypted(phone):
        sealed = payload.model_copy(update={"phone": _keyring.encrypt(phone)})
        event = event.model_copy(update={"payload": sealed})
    return event.model_dump_json().encode()


class EncryptedPhone(TypeDecorator[str]):
    """A ``TEXT`` column that holds phone numbers sealed; the code sees them plain."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        """Seal on the way in (an already encrypted value is kept as it is)."""
        if value is None or is_encrypted(value):
            return value
        return _keyring.encrypt(value)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> str | None:
        """Open on the way out."""
        return None if value is None else _keyring.decrypt(str(value))
