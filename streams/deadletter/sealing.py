"""AES-256-GCM sealing of dead-lettered payloads.

Raw records may hold personal information (phones, emails) that ingestion
would have hashed, so a dead letter keeps the original bytes only encrypted.
Whoever holds the key can open them for replay or debugging
(``touchline dlq inspect --open``, ``touchline dlq replay``); the topic itself holds no plaintext.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from streams.settings import Settings


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("dead-letter key must be 32 bytes (AES-256)")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(key).hexdigest()[:12]

    def seal(self, payload: bytes, associated: bytes) -> tuple[bytes, bytes]:
        nonce = os.urandom(12)
        return nonce, self._aead.encrypt(nonce, payload, associated)

    def open(self, nonce: bytes, sealed: bytes, associated: bytes) -> bytes:
        return self._aead.decrypt(nonce, sealed, associated)

    @classmethod
    def from_settings(cls, settings: Settings) -> Sealer:
        """The configured key, or the per-installation key file (created on first use)."""
        key = _dead_letter_key(settings, create=True)
        assert key is not None
        return cls(key)


def configured_sealer(settings: Settings) -> Sealer | None:
    """The dead-letter key of these settings, or None: never creates a key file
    (tools that read dead letters: a new random key could open nothing)."""
    key = _dead_letter_key(settings, create=False)
    return None if key is None else Sealer(key)


def identifier_salt(settings: Settings) -> bytes:
    """The salt of phone/email hashes: configured, or a per-installation file (created on first use)."""
    salt = _identifier_salt(settings, create=True)
    assert salt is not None
    return salt


def configured_salt(settings: Settings) -> bytes | None:
    """The identifier salt of these settings, or None: never creates a salt file (a new salt links nothing)."""
    return _identifier_salt(settings, create=False)


def _dead_letter_key(settings: Settings, create: bool) -> bytes | None:
    if settings.dead_letter_key:
        return base64.b64decode(settings.dead_letter_key)
    return _installation_secret(settings.data_path / "dead-letter.key", create)


def _identifier_salt(settings: Settings, create: bool) -> bytes | None:
    if settings.identifier_salt:
        return settings.identifier_salt.encode()
    return _installation_secret(settings.data_path / "identifier.salt", create)


def _installation_secret(path: Path, create: bool) -> bytes | None:
    if create:
        return local_secret(path)
    return base64.b64decode(path.read_bytes()) if path.exists() else None


def local_secret(path: Path) -> bytes:
    """A per-installation secret for the embedded default, created once, mode 0600.

    Several workers start at once and may all find no key: each writes a
    complete candidate to its own temporary file and hard-links it into
    place; link() is atomic and fails if the key exists, so every process
    reads the one key that won, never a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        candidate = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64encode(AESGCM.generate_key(bit_length=256)))
        try:
            os.link(candidate, path)
        except FileExistsError:
            pass  # another process won the race: use its key
        finally:
            os.unlink(candidate)
    return base64.b64decode(path.read_bytes())
