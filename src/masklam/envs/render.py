"""One offscreen MuJoCo renderer per environment: an RGB pass and a segmentation pass of one scene.

Both passes draw the same `MjvScene` (built once per step from the same camera pose), so the agent
mask is aligned with the RGB frame pixel for pixel, under camera shake and colour change alike.
Textures changed in `model.tex_data` are re-uploaded with `upload_texture`.
"""
from __future__ import annotations

import atexit
import weakref

import mujoco
import numpy as np

from masklam.errors import MasklamError


class SceneRenderer:
    """RGB and agent-mask rendering of `model` at (height, width) through a fixed camera id."""

    def __init__(
        self,
        model: mujoco.MjModel,
        height: int,
        width: int,
        agent_geoms: np.ndarray,
        shadows: bool = True,
        reflections: bool = True,
    ):
        if width > model.vis.global_.offwidth or height > model.vis.global_.offheight:
            raise MasklamError(
                f"image size {height}x{width} exceeds the model's offscreen buffer "
                f"{model.vis.global_.offheight}x{model.vis.global_.offwidth}"
            )
        self.model, self.height, self.width = model, height, width
        self._gl = mujoco.GLContext(width, height)
        self._gl.make_current()
        # Free GL objects before EGL's own exit hook terminates the display (atexit runs LIFO).
        ref = weakref.ref(self)

        def _at_exit() -> None:
            r = ref()
            if r is not None:
                r.close()

        self._at_exit = _at_exit
        atexit.register(_at_exit)
        self._ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150.value)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN.value, self._ctx)
        self._scene = mujoco.MjvScene(model, maxgeom=10000)
        self._option = mujoco.MjvOption()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._rect = mujoco.MjrRect(0, 0, width, height)
        self._is_agent = np.zeros(model.ngeom, bool)
        self._is_agent[agent_geoms] = True
        self._is_agent_or_none = np.concatenate([[False], self._is_agent])  # indexed by geom id + 1
        self._rgb = np.empty((height, width, 3), np.uint8)
        self._seg = np.empty((height, width, 3), np.uint8)
        flags = self._scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = shadows
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = reflections

    def upload_texture(self, tex: int) -> None:
        """Send texture `tex` of model.tex_data to the GPU context."""
        self._gl.make_current()
        mujoco.mjr_uploadTexture(self.model, self._ctx, tex)

    def update(self, data: mujoco.MjData, camera_id: int) -> None:
        """Build the scene from `data` through fixed camera `camera_id` (uses data.cam_xpos/xmat)."""
        self._camera.fixedcamid = camera_id
        mujoco.mjv_updateScene(
            self.model, data, self._option, None, self._camera, mujoco.mjtCatBit.mjCAT_ALL.value, self._scene
        )

    def rgb(self) -> np.ndarray:
        """RGB pass of the current scene: (H, W, 3) uint8 (a new array)."""
        self._gl.make_current()
        mujoco.mjr_render(self._rect, self._scene, self._ctx)
        mujoco.mjr_readPixels(self._rgb, None, self._rect, self._ctx)
        return np.ascontiguousarray(self._rgb[::-1])

    def agent_mask(self) -> np.ndarray:
        """Segmentation pass of the current scene: (H, W) bool, True on the agent's geoms."""
        return self.is_agent(self.geom_ids())

    def is_agent(self, geom_ids: np.ndarray) -> np.ndarray:
        """(H, W) geom ids (-1: none) -> (H, W) bool, True on the agent's geoms."""
        return self._is_agent_or_none[geom_ids + 1]

    def geom_ids(self) -> np.ndarray:
        """Segmentation pass of the current scene: (H, W) int model geom id per pixel, -1 where no geom."""
        self._gl.make_current()
        flags = self._scene.flags
        saved = flags.copy()
        flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = True
        flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = True
        try:
            mujoco.mjr_render(self._rect, self._scene, self._ctx)
            mujoco.mjr_readPixels(self._seg, None, self._rect, self._ctx)
        finally:
            np.copyto(flags, saved)
        seg = self._seg.astype(np.int32)
        segid = seg[..., 0] + (seg[..., 1] << 8) + (seg[..., 2] << 16)  # scene segid + 1; 0 = background
        n = self._scene.ngeom
        lut = np.full(n + 1, -1, np.int64)
        for g in self._scene.geoms[:n]:
            if g.segid >= 0 and g.objtype == mujoco.mjtObj.mjOBJ_GEOM and 0 <= g.objid < self._is_agent.size:
                lut[g.segid + 1] = g.objid
        return lut[np.minimum(segid, n)][::-1].copy()

    def close(self) -> None:
        """Free the GL resources (idempotent); other renderers' contexts stay intact."""
        if getattr(self, "_gl", None) is None:
            return
        self._gl.make_current()  # free our objects in our own context, not in whichever is current
        if self._ctx is not None:
            self._ctx.free()
            self._ctx = None
        self._gl.free()
        self._gl = None
        atexit.unregister(self._at_exit)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: GL may already be gone
            pass
