"""The errors npvit raises for problems a user can fix, so every program reports them as one line.

A ``UserError`` is a mistake in what the user asked for or gave (a flag, a config file, a
checkpoint, a dataset, a run directory); the command-line programs print its message after
``error:`` and exit with status 2. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix; the message says what it is and, where it can, how to fix it."""


class ConfigError(UserError, ValueError):
    """An impossible or inconsistent training configuration."""


class DataError(UserError, RuntimeError):
    """Data missing, unreadable or unusable."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable, of another model, or holds non-finite weights."""


class RunDirError(UserError, RuntimeError):
    """A run directory that holds another run or is in use by another process."""


class WriteError(UserError, OSError):
    """The system refused a write (disk full, quota, read-only file system, permission, a folder that
    vanished): the message names the file and the cause; the file's previous version is intact."""

    def __init__(self, message, errno=None):
        UserError.__init__(self, message)
        self.errno = errno

    def __str__(self):
        return self.args[0]


class ReplicasDiffer(UserError):
    """The processes of a run were started with different settings or data, or hold different weights
    (--check-replicas): found on every rank at the same point, so every rank stops there and rank 0 says it."""


class StartFailed(UserError):
    """Some processes of a multi-process run could not start; ``messages[r]`` is rank r's error line
    (None where it started), known on rank 0."""

    def __init__(self, messages):
        self.messages = messages
        super().__init__("a process of this run could not start")


class PeerLost(RuntimeError):
    """Processes of an MPI run went away (their process ended, or the network to their host): this one waited
    for them at a collective longer than the run's --peer-timeout, or MPI reported them gone. ``missing``:
    [(rank, host)]; ``me``: (rank, host) of the process that noticed; ``where``: the step, in words. A program
    that catches it should end with ``os._exit``: MPI's finalisation at exit would wait for the lost ranks."""

    def __init__(self, missing, me, waited, where="", cause=None):
        self.missing, self.me, self.waited, self.where, self.cause = missing, me, waited, where, cause
        super().__init__(self.describe())

    def describe(self, after=""):
        gone = ", ".join(f"rank {r} on host {h}" for r, h in self.missing)
        how = (f"MPI reported it gone ({self.cause})" if self.cause else
               f"it did not arrive within {self.waited:g} s")
        return (f"{gone} went away: rank {self.me[0]} on host {self.me[1]} waited for it"
                f"{' ' + self.where if self.where else ''} and {how}; its process ended, or the network to its host "
                f"went down{after}")


class Diverged(RuntimeError):
    """Training produced a non-finite loss; the last finite checkpoint is kept."""


def error_line(e) -> str:
    """The one line a program prints for an error a user can fix: ``error: <message>`` (an OSError as the
    operating system said it, with its file)."""
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"error: {e.strerror.lower()}: {e.filename}"
    return f"error: {e}"
