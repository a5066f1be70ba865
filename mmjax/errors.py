"""mmjax's error types: each names the field at fault and what was expected."""


class MmjaxError(ValueError):
    """Base class of every error mmjax raises on bad input."""


class ConfigError(MmjaxError):
    """An unknown config key, a wrongly typed value, or an invalid choice."""


class InputError(MmjaxError):
    """A batch or sample whose keys, shapes, dtypes or values are wrong."""


class DataError(MmjaxError):
    """A dataset that is missing, corrupt or inconsistent with its info file."""


class CheckpointError(MmjaxError):
    """A checkpoint that is unreadable or belongs to another model."""


class TrainingError(MmjaxError):
    """A run that cannot go on as configured, such as a NaN or infinite loss."""
