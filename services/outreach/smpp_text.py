r"""SMS text for SMPP: the alphabet, the segments, and their concatenation headers (UDH).

A text that the GSM 7-bit default alphabet can carry goes in it (``data_coding``
0, one octet per septet as SMPP carries it; the SMSC packs them for the air):
160 septets in one SMS, 153 per segment of a longer one, and a character of the
extension table (``€ [ ] { } ^ ~ | \``) counts two, its escape and itself,
which never part. Anything else (Chinese, for one) goes in UCS-2 (``data_coding``
8, UTF-16 big-endian): 70 code units in one SMS, 67 per segment, and a
surrogate pair never parts either.

A longer text is cut into segments, each behind a concatenation header
(3GPP TS 23.040 9.2.3.24.1: ``05 00 03 ref total seq``) with ``esm_class``'s
UDHI bit set, so the handset shows one message. The encoding itself is
aiosmpplib's codecs; the counting and cutting are here because its own
splitter counts characters, not septets.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from aiosmpplib.codec import GSM7BitCodec, UCS2Codec

GSM7, UCS2 = 0x00, 0x08
"""``data_coding`` of the SMSC default alphabet (GSM 03.38) and of UCS-2."""

UDHI = 0x40
"""``esm_class`` bit: the short message starts with a user data header."""

ESCAPE = 0x1B
"""GSM 03.38's escape to the extension table: it and the next septet are one character."""

SINGLE = {GSM7: 160, UCS2: 140}
"""Most units (septets; UCS-2 octets) of an SMS without a header."""

PART = {GSM7: 153, UCS2: 134}
"""Most units of one segment behind the 6-octet concatenation header (7 septets padded)."""

MAX_SEGMENTS = 255
"""The header's segment count is one octet."""


@dataclass(frozen=True, slots=True)
class Encoded:
    """A text ready for ``submit_sm``: its ``data_coding`` and the short messages to send."""

    data_coding: int
    parts: list[bytes]  # each with its header when there are several

    @property
    def esm_class(self) -> int:
        """UDHI for a concatenated message, else the default."""
        return UDHI if len(self.parts) > 1 else 0

    @property
    def encoding(self) -> str:
        """The data coding's name in aiosmpplib."""
        return "gsm0338" if self.data_coding == GSM7 else "ucs2"


def _gsm7(text: str) -> bytes | None:
    """The text as GSM 03.38 septets (one per octet), or None if the alphabet lacks a character."""
    try:
        septets, _ = GSM7BitCodec().encode(text)
    except (UnicodeEncodeError, ValueError):
        return None
    return septets


def _cut(data: bytes, size: int, *, coding: int) -> list[bytes]:
    """``data`` in pieces of at most ``size`` octets, never splitting a character."""
    pieces, start = [], 0
    while start < len(data):
        end = min(start + size, len(data))
        if end < len(data):
            if coding == GSM7 and data[end - 1] == ESCAPE and _escapes_next(data, end - 1):
                end -= 1  # the escape goes with its character
            elif coding == UCS2 and 0xD8 <= data[end - 2] <= 0xDB:
                end -= 2  # a high surrogate goes with its low one
        pieces.append(data[start:end])
        start = end
    return pieces


def _escapes_next(data: bytes, index: int) -> bool:
    """Whether the ESC at ``index`` starts a pair (and is not itself the second of one)."""
    run = 0
    while index - run - 1 >= 0 and data[index - run - 1] == ESCAPE:
        run += 1
    return run % 2 == 0


def encode(text: str) -> tuple[int, list[bytes]]:
    """``(data_coding, payloads)``: the text in its alphabet, cut into segments' payloads."""
    septets = _gsm7(text)
    if septets is not None:
        coding, data = GSM7, septets
    else:
        coding, data = UCS2, UCS2Codec().encode(text)[0]
    if len(data) <= SINGLE[coding]:
        return coding, [data]
    return coding, _cut(data, PART[coding], coding=coding)


def segment_count(text: str) -> int:
    """How many SMS the text takes (what the operator bills)."""
    return len(encode(text)[1])


def concat_ref(key: str) -> int:
    """The concatenation reference of a message: from its key, so a resend uses the same one.

    A handset that got some segments of the first try and the rest of a resend
    still puts them together (same reference, same sequence numbers).
    """
    return hashlib.blake2b(key.encode(), digest_size=1).digest()[0]


def prepare(text: str, *, key: str) -> Encoded:
    """The text as short messages: one, or segments behind concatenation headers.

    Raises ValueError for a text over 255 segments (no template comes near).
    """
    coding, payloads = encode(text)
    if len(payloads) == 1:
        return Encoded(coding, payloads)
    if len(payloads) > MAX_SEGMENTS:
        raise ValueError(f"text too long for one SMS: {len(payloads)} segments")
    ref, total = concat_ref(key), len(payloads)
    return Encoded(
        coding,
        [bytes([5, 0, 3, ref, total, seq]) + part for seq, part in enumerate(payloads, start=1)],
    )
