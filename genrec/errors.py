"""The errors genrec reports to users; each names the file, row, column or config key at fault.

They are raised in the driver and inside Ray tasks and workers alike, so each one pickles back
to itself (`__reduce__`): Ray re-raises a task's exception in the caller by unpickling it.
"""


class GenrecError(Exception):
    """An error the user can act on: the CLI prints its one line and exits with code 2."""


class ConfigError(GenrecError, ValueError):
    """A config file, override or key value that cannot work."""


class DataError(GenrecError, ValueError):
    """Input data that cannot be used as it is."""

    def __init__(self, source: str, message: str):
        super().__init__(f"{source}: {message}")
        self.source, self.message = source, message

    def __reduce__(self):
        return (type(self), (self.source, self.message))


class TrainingFailed(GenrecError, RuntimeError):
    """A distributed run that failed without a cause the user could fix in the input."""


def user_error(err: BaseException) -> GenrecError | None:
    """The genrec error at the root of `err`, if there is one.

    Ray re-raises a task's exception wrapped (`cause`: a `RayTaskError` that also subclasses
    the original, but prints its whole traceback), a training worker's in a `WorkerGroupError`
    (`worker_failures`) and the controller's in a `ControllerError` (`controller_failure`);
    Python chains the rest (`__cause__`, `__context__`). Read by attribute, so Ray is not
    imported here.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [err]
    while pending:
        error = pending.pop(0)
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            pending.insert(0, cause)
            continue
        if isinstance(error, GenrecError):
            return error
        pending += list(getattr(error, "worker_failures", {}).values())
        pending += [getattr(error, "controller_failure", None), error.__cause__, error.__context__]
    return None
