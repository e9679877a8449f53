"""The ``fastsvd`` command line, by concern:

common.py    the group, one-line errors and exit codes, shared options
local.py     ``generate``: one video on this machine (or on a server with ``--server``)
server.py    ``serve``, ``worker``, ``webhooks``, ``keys``: run and manage a server
doctor.py    ``doctor``: is this machine ready to serve (GPU, weights, memory plan)
remote.py    ``submit``, ``status``, ``result``, ``cancel``, ``watch``: talk to one
progress.py  progress bars, one per pipeline stage
"""

from fastsvd.cli import doctor, local, remote, server  # noqa: F401  (each registers its commands)
from fastsvd.cli.common import main

__all__ = ["main"]
