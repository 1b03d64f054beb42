"""Identifier normalisation and salted hashing (pure).

Phone numbers become E.164 (default country +86), emails lower-case and
trimmed; then both are replaced by a salted HMAC-SHA256 so no raw personal
data leaves ingestion. The same salt in every process makes the same phone
hash to the same value everywhere, so hashed identifiers still link. Junk
values (taxonomy.JUNK_VALUES) and unusable phones/emails become None: they
never link two events.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

from streams.touchpoint.taxonomy import PERSONAL_IDENTIFIERS, is_junk

HASH_PREFIX = "h1:"  # marks a hashed identifier (and the hashing scheme's version)
_PHONE_NOISE = re.compile(r"[\s\-().]")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def phone_e164(raw: str, default_country: str = "+86") -> str | None:
    """E.164 form of a phone number, or None when it cannot be one."""
    s = _PHONE_NOISE.sub("", raw.strip())
    if s.startswith("00"):
        s = "+" + s[2:]
    if not s.startswith("+"):
        cc = default_country.lstrip("+")
        if cc == "86" and s.startswith("0") and len(s) > 9:
            s = s[1:]  # domestic trunk prefix of a landline
        s = "+" + cc + s
    digits = s[1:]
    if not digits.isdigit() or not 8 <= len(digits) <= 15 or digits.startswith("0"):
        return None
    return s


def email_normal(raw: str) -> str | None:
    s = raw.strip().lower()
    return s if _EMAIL.match(s) else None


def hashed(kind: str, value: str, salt: bytes) -> str:
    digest = hmac.new(salt, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return HASH_PREFIX + digest[:40]


def normalise_identifiers(ids: dict[str, Any], salt: bytes, default_country: str = "+86") -> tuple[dict[str, Any], list[str]]:
    """Identifiers with junk removed and personal ones normalised and hashed.

    Returns the new identifiers and the names of the ones dropped as unusable.
    Already-hashed values (a replayed enriched event) pass through unchanged.
    """
    out = dict(ids)
    dropped = []
    for kind, value in ids.items():
        if value is None:
            continue
        if is_junk(value):
            out[kind] = None
            dropped.append(kind)
            continue
        value = value.strip()
        if kind in PERSONAL_IDENTIFIERS:
            if value.startswith(HASH_PREFIX):
                out[kind] = value
                continue
            normal = phone_e164(value, default_country) if kind == "phone" else email_normal(value)
            if normal is None:
                out[kind] = None
                dropped.append(kind)
                continue
            value = hashed(kind, normal, salt)
        out[kind] = value
    return out, dropped
