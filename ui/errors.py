"""Errors the UI raises at its backend boundary.

Everything the backend client can fail with is mapped to one of these, so the chat code
handles a handful of cases and shows words a user understands::

    BackendError                  any failure talking to the model backend
    ├── BackendUnreachable        nothing answered (connection refused, DNS, reset)
    ├── BackendTimeout            it answered too slowly (connect or read deadline)
    ├── BackendBusy               429/503: all instances busy or the queue is full
    ├── BackendAuthError          401/403, or no ID token could be obtained
    ├── ModelNotFound             404 for the model
    ├── BackendMisconfigured      the backend speaks another API than it is set up for
    └── BackendResponseError      any other status, or an error line mid-stream

Each carries `status_code` (None when there was no HTTP answer) and a `user_message`
that never contains a token or other secret.

Input the user (or a client) sent that cannot be used is a different family: one base
class, `InputRejected`, whose `user_message` says what is wrong with the input::

    InputRejected                 the request itself cannot be served as sent
    ├── HistoryRejected           a malformed conversation (ui.turn.history)
    ├── ModelRejected             a model name that cannot be used (ui.backend_access.models)
    ├── BattleTokenError          a battle token that is forged, stale or malformed
    └── ShareLinkError            a share link that cannot be made or opened
"""

from __future__ import annotations


class InputRejected(ValueError):
    """The request cannot be served as sent; `user_message` says why, in plain words."""

    default_message = "That request cannot be used."

    def __init__(self, user_message: str | None = None) -> None:
        self.user_message = user_message or self.default_message
        super().__init__(self.user_message)


class BackendError(Exception):
    """A failure talking to the model backend."""

    default_message = "The model backend failed."

    def __init__(self, message: str | None = None, *, status_code: int | None = None) -> None:
        self.status_code = status_code
        self.user_message = message or self.default_message
        super().__init__(self.user_message)


class BackendUnreachable(BackendError):
    default_message = "The model backend cannot be reached."


class BackendTimeout(BackendError):
    default_message = "The model backend took too long to answer."


class BackendBusy(BackendError):
    default_message = "All model backends are busy right now."


class BackendAuthError(BackendError):
    default_message = "The UI is not allowed to call the model backend."


class ModelNotFound(BackendError):
    default_message = "That model is not available on the backend."


class BackendMisconfigured(BackendError):
    default_message = "The model backend is not set up the way it answers."


class BackendResponseError(BackendError):
    default_message = "The model backend returned an error."
