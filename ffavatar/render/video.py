"""Video files: mp4 (H.264 via imageio-ffmpeg's bundled ffmpeg) or gif (imageio), by extension."""
from __future__ import annotations

import os

import numpy as np

__all__ = ["VideoWriter"]


class VideoWriter:
    """Stream RGB frames to ``path`` (``.mp4``: libx264, yuv420p; ``.gif``: looping GIF).

    Frames are [H,W,3] uint8 or float in [0,1] arrays (numpy or torch); all must have the size of
    the first. For mp4, odd sizes are padded by one edge pixel (yuv420p needs even sizes).

    Use as a context manager::

        with VideoWriter("out.mp4", fps=24) as w:
            w.write(frame)
    """

    def __init__(self, path: "str | os.PathLike", fps: float = 24.0, quality: int = 8):
        self.path = os.fspath(path)
        ext = os.path.splitext(self.path)[1].lower()
        if ext not in (".mp4", ".gif"):
            raise ValueError(f"VideoWriter: unsupported extension {ext!r} of {self.path!r}; use .mp4 or .gif")
        if fps <= 0:
            raise ValueError(f"VideoWriter: fps must be > 0, got {fps}")
        self.kind, self.fps, self.quality = ext[1:], float(fps), quality
        self._gen = None
        self._gif: list[np.ndarray] = []
        self._size = None
        self.frames = 0
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise ValueError(f"VideoWriter: the folder {parent!r} of {self.path!r} does not exist")

    @staticmethod
    def _to_uint8(frame) -> np.ndarray:
        if hasattr(frame, "detach"):
            frame = frame.detach().cpu().numpy()
        a = np.asarray(frame)
        if a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"VideoWriter.write: frame expected shape [H,W,3], got {list(a.shape)}")
        if a.dtype != np.uint8:
            a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return a

    def write(self, frame) -> None:
        """Append one [H,W,3] frame (uint8, or float in [0,1])."""
        a = self._to_uint8(frame)
        if self._size is None:
            self._size = a.shape[:2]
        elif a.shape[:2] != self._size:
            raise ValueError(f"VideoWriter.write: frame size {list(a.shape[:2])} differs from the first "
                             f"frame's {list(self._size)}")
        if self.kind == "gif":
            self._gif.append(a)
        else:
            h, w = a.shape[:2]
            if h % 2 or w % 2:
                a = np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            if self._gen is None:
                import imageio_ffmpeg
                self._gen = imageio_ffmpeg.write_frames(
                    self.path, (a.shape[1], a.shape[0]), fps=self.fps, codec="libx264",
                    pix_fmt_out="yuv420p", quality=self.quality, macro_block_size=1,
                    ffmpeg_log_level="error")
                self._gen.send(None)
            self._gen.send(np.ascontiguousarray(a))
        self.frames += 1

    def close(self) -> None:
        """Finish the file."""
        if self.kind == "gif":
            if self._gif:
                import imageio.v3 as iio
                iio.imwrite(self.path, np.stack(self._gif), extension=".gif",
                            duration=1000.0 / self.fps, loop=0)
                self._gif = []
        elif self._gen is not None:
            self._gen.close()
            self._gen = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
