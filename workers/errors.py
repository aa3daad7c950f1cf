"""The one exception tree for labgate's own failures (never for test results)."""


class LabgateError(Exception):
    """Base of every error labgate raises on purpose."""


class ConfigError(LabgateError):
    """The operator's configuration is invalid; nothing can run until it is fixed."""


class UserError(LabgateError):
    """The submitted change or its plan is unusable; reported once, never retried."""


class InfraError(LabgateError):
    """Our infrastructure failed (git, sandbox, QEMU, broker); retried with backoff."""
