"""Errors the case service raises; the HTTP layer maps each to a status and a JSON body."""

from __future__ import annotations


class ServiceError(Exception):
    code = "error"
    status = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(ServiceError):
    code = "invalid"
    status = 422


class CaseNotFound(ServiceError):
    code = "not_found"
    status = 404


class Conflict(ServiceError):
    code = "conflict"
    status = 409


class TransitionRefused(ServiceError):
    code = "illegal_transition"
    status = 409
