"""Secrets at rest: MultiFernet over NOMAFLOW_ENCRYPTION_KEYS (newest key first)."""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import Flask, current_app

ENC_PREFIX = "enc:"  # a secret in an exported job file: only the same keys can read it


class SecretsVault:
    """Seal and unseal values; the first key encrypts, every key decrypts."""

    def __init__(self, keys: tuple[str, ...]):
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    def seal(self, value: Any) -> str:
        return self._fernet.encrypt(json.dumps(value).encode()).decode()

    def unseal(self, token: str) -> Any:
        try:
            return json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as error:
            raise ValueError(
                "cannot decrypt a stored secret: NOMAFLOW_ENCRYPTION_KEYS lacks the key it was "
                "sealed with"
            ) from error

    def export_token(self, value: Any) -> str:
        """The value as an ``enc:`` token for a job file."""
        return ENC_PREFIX + self.seal(value)

    def read_export(self, value: Any) -> Any:
        """The clear value of an ``enc:`` token (ValueError when these keys cannot open it);
        any other value as given (a secret written in clear in the file)."""
        if isinstance(value, str) and value.startswith(ENC_PREFIX):
            return self.unseal(value[len(ENC_PREFIX) :])
        return value


def vault(app: Flask | None = None) -> SecretsVault:
    app = app or current_app
    return SecretsVault(app.config["NOMAFLOW"].encryption_keys)
