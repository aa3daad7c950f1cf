"""LabSetupError: the lab itself cannot run (missing kernel, QEMU, tools)."""


class LabSetupError(Exception):
    """The lab is not set up to boot anything; the message says what failed and how to fix it.

    ``lab`` must not import ``workers``; the worker translates this into its ``InfraError``.
    """
