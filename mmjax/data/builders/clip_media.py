"""Synthetic video clips made from real material: a product photo moving over a canvas
(pan, zoom, a passing occluder, sensor noise) and a voice-over track, written as MP4
(H.264 video, AAC audio) with PyAV, the same library `mmjax data import` decodes with."""

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Motion:
    """How a photo moves and is corrupted within one clip; every range is drawn per clip."""

    size: int  # canvas side in pixels
    frames: int
    scale: tuple[float, float]  # the photo's side as a fraction of the canvas
    occluder: tuple[float, float]  # the occluding bar's width as a fraction of the canvas
    noise: float  # std of the Gaussian pixel noise, as a fraction of 255


def render_frames(photo: np.ndarray, motion: Motion, rng: np.random.Generator) -> np.ndarray:
    """A gray photo uint8 [h, w] (bright object on black) -> frames uint8 [T, S, S, 3].

    The object, tinted with a random colour, is composited by its brightness over a random
    background colour; it zooms between two drawn scales and pans between two drawn
    centres; a bar of random colour crosses the canvas; then Gaussian noise is added.
    """
    s, t = motion.size, motion.frames
    tint = rng.uniform(0.45, 1.0, 3)
    background = rng.uniform(0.0, 0.4, 3)
    scales = np.linspace(*rng.uniform(*motion.scale, 2), t)
    centres = np.linspace(rng.uniform(0.35, 0.65, 2), rng.uniform(0.35, 0.65, 2), t)
    bar = _occluder(motion, rng)
    frames = np.empty((t, s, s, 3), np.float32)
    image = Image.fromarray(photo)
    for i in range(t):
        side = max(4, round(scales[i] * s))
        alpha = np.zeros((s, s), np.float32)
        sprite = np.asarray(image.resize((side, side), Image.BILINEAR), np.float32) / 255
        top, left = (np.round(centres[i] * s) - side // 2).astype(int)
        _paste(alpha, sprite, top, left)
        frame = background * (1 - alpha[..., None]) + tint * alpha[..., None]
        frames[i] = bar.apply(frame, i / max(t - 1, 1))
    frames += rng.normal(0.0, motion.noise, frames.shape).astype(np.float32)
    return np.round(np.clip(frames, 0, 1) * 255).astype(np.uint8)


@dataclass(frozen=True)
class _Bar:
    horizontal: bool  # the bar is a row band moving down (else a column band moving right)
    width: int
    start: float  # position (fraction of the canvas) at the first and the last frame
    end: float
    colour: np.ndarray

    def apply(self, frame: np.ndarray, progress: float) -> np.ndarray:
        s = frame.shape[0]
        first = round((self.start + (self.end - self.start) * progress) * s)
        lo, hi = max(first, 0), min(first + self.width, s)
        if lo < hi:
            if self.horizontal:
                frame[lo:hi] = self.colour
            else:
                frame[:, lo:hi] = self.colour
        return frame


def _occluder(motion: Motion, rng: np.random.Generator) -> _Bar:
    width = round(rng.uniform(*motion.occluder) * motion.size)
    start, end = rng.uniform(-0.2, 1.0, 2)
    return _Bar(bool(rng.integers(2)), width, start, end, rng.uniform(0, 1, 3))


def _paste(canvas: np.ndarray, sprite: np.ndarray, top: int, left: int) -> None:
    """canvas[top:, left:] = sprite, clipped to the canvas."""
    h, w = sprite.shape
    s = canvas.shape[0]
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, s), min(left + w, s)
    if y0 < y1 and x0 < x1:
        canvas[y0:y1, x0:x1] = sprite[y0 - top : y1 - top, x0 - left : x1 - left]


def write_clip(
    path: Path, frames: np.ndarray, fps: int, audio: np.ndarray | None, sample_rate: int
) -> None:
    """Writes frames uint8 [T, S, S, 3] (even sides) as H.264 at `fps`, and `audio` int16 [N]
    (mono) as AAC when given, into the MP4 file `path`. The bytes depend only on the inputs,
    so a rebuild writes the same files: one encoder thread, explicit timestamps, and x264's
    adaptive quantisation, macroblock tree and psychovisual tuning off (with them, about one
    encode in ten differed from run to run in a busy multi-threaded process)."""
    import av

    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        video.options = {
            "crf": "18",
            "preset": "veryfast",
            "threads": "1",
            "x264-params": "aq-mode=0:mbtree=0:psy=0",
        }
        sound = None
        if audio is not None:
            sound = out.add_stream("aac", rate=sample_rate)
            sound.layout = "mono"
            sound.options = {"aac_coder": "fast"}  # 4x faster to encode than the default
        for i, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = i  # explicit timestamps: the encoder's rate control depends on them
            picture.time_base = Fraction(1, fps)
            out.mux(video.encode(picture))
        out.mux(video.encode())
        if sound is not None:
            chunk = av.AudioFrame.from_ndarray(audio[None, :], format="s16", layout="mono")
            chunk.sample_rate = sample_rate
            out.mux(sound.encode(chunk))
            out.mux(sound.encode())
