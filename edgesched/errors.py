"""The error hierarchy: every failure a user can cause has a type and a one-line message.

Errors that travel over the wire carry a stable `code` (the class name) so the client can
raise the same type the server raised.
"""
from __future__ import annotations


class EdgeschedError(Exception):
    """Base of every error edgesched raises on purpose. str(e) is one line."""

    code = "ERROR"


# --- set-up errors: raised before serving starts ------------------------------------------

class ConfigError(EdgeschedError):
    """A config file or CLI argument is wrong: names the file, the key and what was expected."""

    code = "CONFIG_ERROR"

    def __init__(self, source: str, key: str, expected: str, got: object = ...):
        self.source, self.key, self.expected = source, key, expected
        tail = "" if got is ... else f", got {got!r}"
        super().__init__(f"{source}: {key}: expected {expected}{tail}")


class ModelLoadError(EdgeschedError):
    """A model file or sliced-model directory cannot be loaded."""

    code = "MODEL_LOAD_ERROR"


class BackendUnavailable(EdgeschedError):
    """The configured backend cannot run on this machine (library missing, no device)."""

    code = "BACKEND_UNAVAILABLE"


class EngineBuildError(EdgeschedError):
    """A TensorRT engine cannot be built from a slice (parse, precision, shapes, calibration)."""

    code = "ENGINE_BUILD_ERROR"


class TelemetryUnavailable(EdgeschedError):
    """A telemetry source cannot be used here (library missing, service down, no device).
    str(e) is one line saying what to do."""

    code = "TELEMETRY_UNAVAILABLE"


# --- request errors: the server replies with these; the client raises them ----------------

class RequestError(EdgeschedError):
    """A request failed; the server and every other request carry on."""

    code = "REQUEST_ERROR"


class UnknownModel(RequestError):
    code = "UNKNOWN_MODEL"


class InvalidInput(RequestError):
    """Wrong tensor names, dtypes or shapes, or a malformed message."""

    code = "INVALID_INPUT"


class MessageTooLarge(InvalidInput):
    """The request is larger than the server's `limits.max_message_bytes`."""

    code = "MESSAGE_TOO_LARGE"


class DeadlineExceeded(RequestError):
    code = "DEADLINE_EXCEEDED"


class Overloaded(RequestError):
    """The model's queue is full: try again later (the request was not run)."""

    code = "OVERLOADED"


class ShuttingDown(RequestError):
    """The server is draining and accepts no new work."""

    code = "SHUTTING_DOWN"


class ModelUnavailable(RequestError):
    """The model is unhealthy (its launches keep failing or one hung): refused without running;
    the server retries it with one probe request every `limits.unhealthy_retry_s`."""

    code = "MODEL_UNAVAILABLE"


class ServerError(RequestError):
    """The request was accepted but failed inside the server (a backend fault)."""

    code = "SERVER_ERROR"


class NotPermitted(RequestError):
    """A model control request (load, unload) from a client that is not an admin
    (`server.admin_group`, `server.admin_keys`); nothing was changed."""

    code = "NOT_PERMITTED"


class ModelChangeRefused(RequestError):
    """A model load or unload that was not applied (a bad entry, a model file that does not
    load or warm up, the last model served): the served set is unchanged."""

    code = "MODEL_CHANGE_REFUSED"


class ServerUnavailable(RequestError):
    """No reply from the server within the client's timeout (not running, or restarted)."""

    code = "SERVER_UNAVAILABLE"


_BY_CODE = {cls.code: cls for cls in (
    UnknownModel, InvalidInput, MessageTooLarge, DeadlineExceeded, Overloaded, ShuttingDown,
    ModelUnavailable, ServerError, ServerUnavailable, NotPermitted, ModelChangeRefused,
)}


def error_from_code(code: str, message: str) -> RequestError:
    """The exception a client raises for an error reply; unknown codes become ServerError."""
    return _BY_CODE.get(code, ServerError)(message)
