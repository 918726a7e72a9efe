"""The project's error hierarchy: each error also inherits the matching builtin."""


class AnonymizerError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(AnonymizerError, ValueError):
    """A configuration file or value is invalid; the message names file, line and key."""


class ModelError(AnonymizerError, ValueError):
    """A model file or its manifest is missing, unreadable or inconsistent."""


class BackendUnavailable(AnonymizerError, RuntimeError):
    """A requested compute backend cannot run here; the message says why."""


class EngineError(AnonymizerError, RuntimeError):
    """Inference failed at run time."""


class MediaError(AnonymizerError, ValueError):
    """An input file is missing, not an image or video, or corrupt."""


class StreamError(AnonymizerError, ConnectionError):
    """A camera stream failed (recoverable: reconnect with backoff)."""
