"""What the command-line tools do once at start, before any other import.

Kept out of `import brt`, which changes nothing in the process (the tools
call these explicitly, at the edge).
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def _stderr_silenced():
  """Sends file descriptor 2 to /dev/null: TensorFlow's C++ start-up lines
  (oneDNN notices, "Could not find cuda drivers", cuInit errors) are written
  there before its logging honours TF_CPP_MIN_LOG_LEVEL."""
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def quiet_tensorflow() -> None:
  """Imports TensorFlow (the data pipeline's) without its start-up lines and
  hides the GPUs from it: the accelerators are jax's, and TensorFlow would
  otherwise initialise CUDA (or fail to, loudly) and reserve their memory.
  An import error is raised as usual, after the silence ends."""
  if "tensorflow" in sys.modules:
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  with _stderr_silenced():
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
