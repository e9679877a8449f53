"""Keep the model libraries' informational chatter out of the user's terminal."""

from __future__ import annotations

import os


def quiet_libraries() -> None:
    """Errors only from diffusers and transformers, unless their own variables say otherwise."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    if "TRANSFORMERS_VERBOSITY" not in os.environ:
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()  # "Loading weights": one bar per component
    if "DIFFUSERS_VERBOSITY" not in os.environ:
        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
