"""The errors genrec reports to users; each names the file, row, column or config key at fault."""


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


class DataError(ValueError):
    """Input data that cannot be used as it is."""

    def __init__(self, source: str, message: str):
        super().__init__(f"{source}: {message}")
        self.source = source


class TrainingFailed(RuntimeError):
    """A distributed run that ran out of restarts; its checkpoints stay for a resume."""
