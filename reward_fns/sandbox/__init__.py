"""Running untrusted Python (the ``code`` reward's solutions) under OS and interpreter limits."""

from .run import SandboxLimits, SandboxResult, probe_sandbox, run_python

__all__ = ["SandboxLimits", "SandboxResult", "probe_sandbox", "run_python"]
