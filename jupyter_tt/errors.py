"""Errors a user can hit. Each message says what went wrong and what to do about it.

They subclass tornado's ``HTTPError`` so that a Jupyter server answers a failed kernel start
with the right status and our message (not "Unhandled error" and a traceback); everywhere
else ``str(error)`` is just the message.
"""

from tornado.web import HTTPError


class TTError(HTTPError):
    """Base class: ``str(error)`` is the user-facing message."""

    status = 400
    #: For a refusal over a budget (429): seconds after which to ask again.
    retry_after: float | None = None

    def __init__(self, message: str, status: int | None = None):
        # tornado %-formats log_message when logging; keep a literal '%' harmless.
        super().__init__(status or self.status, message.replace("%", "%%"))
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:  # jupyter_server logs a failed extension load with repr()
        return f"{type(self).__name__}({self.message!r})"


class ConfigError(TTError):
    """Bad configuration: an inventory spec, a kernelspec's provisioner config, a state dir."""


class RequestError(TTError):
    """A device request that can never be met (unknown card type, more than exist, over quota)."""


class WaitTimeout(TTError):
    """Devices did not become free within the request's ``wait_timeout``."""

    status = 503


class WaitCancelled(TTError):
    """A kernel's wait in the queue was ended for it: its server is stopping, or a newer kernel of the same
    notebook took its place."""

    status = 503


class LeaseError(TTError):
    """A lease that is missing, released, simulated, or owned by another user."""

    status = 409


class SchedulerUnavailable(TTError):
    """The scheduler (the host's service, or this user's state) did not answer in time."""

    status = 503
