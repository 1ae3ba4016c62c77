"""Exception types of cxrgen: each names what went wrong and what the user can do about it."""


class CxrgenError(Exception):
    """Base class of every error cxrgen raises on purpose."""


class ConfigError(CxrgenError, ValueError):
    """A configuration value is missing, unknown or inconsistent."""


class DataError(CxrgenError):
    """Input data (a file, a table, a collection layout) cannot be used as given."""


class MissingColumnsError(DataError, KeyError):
    """A table lacks columns that the reader needs."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class ImageReadError(DataError):
    """An image file is missing, corrupt or in a format cxrgen cannot decode."""


class ReportError(DataError):
    """A report text is empty, undecodable or has no usable section."""


class TrainingDivergedError(CxrgenError):
    """The training loss became NaN or inf; the last good checkpoint is kept for a resume."""
