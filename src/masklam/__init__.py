"""masklam: latent action models from action-free video in the presence of distractors."""
import os

# Offscreen rendering: EGL works on headless machines (Mesa llvmpipe here, the GPU's driver elsewhere).
# Set before dm_control or mujoco is imported anywhere; a user's own choice wins.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"] if os.environ["MUJOCO_GL"] != "glfw" else "")

from masklam.errors import MasklamError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["MasklamError", "__version__"]
