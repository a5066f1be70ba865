"""Decoders that turn a user's media files (or their bytes) into fixed-shape arrays.

The dataset importer's workers and `mmjax predict` call the same functions, so a model never
sees data prepared two ways: every image and every video frame goes through `fit_image`, every
waveform (from a file or from a clip's audio track) through `fit_waveform` and `to_int16`.

Pillow decodes images, soundfile decodes WAV/FLAC/OGG (and the like), PyAV (FFmpeg) decodes
video and the other audio formats (MP3, AAC/M4A, Opus in WebM, ...). All three are imported
when first needed, so the rest of mmjax works without them.
"""

import dataclasses
import io
import math
import os
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from mmjax.data.audio_io import to_model_rate
from mmjax.errors import ConfigError, DataError, InputError

if TYPE_CHECKING:
    import PIL.Image


class MediaError(DataError):
    """One file (or byte string) that cannot be decoded. The message is the reason only
    (e.g. "not an image Pillow can read (cannot identify image file)"); the caller prefixes
    the row, column and path."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Refusal thresholds against decompression bombs and absurd media; a user can raise them."""

    max_pixels: int = 40_000_000  # of an image, or of one video frame (width * height)
    max_seconds: float = 3600.0  # duration of an audio or video file


Source = str | os.PathLike | bytes  # a path, or the encoded file's bytes

EXTENSIONS: dict[str, str] = {
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"), "image"),
    **dict.fromkeys(
        (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".aiff", ".aif"), "audio"
    ),
    **dict.fromkeys((".mp4", ".webm", ".mkv", ".mov", ".avi"), "video"),
    ".txt": "text",
}

# Pillow plugins tried on an image (JPEG includes MPO, what many cameras write). Plugins that
# run external programs (EPS through Ghostscript) or read exotic formats are left out.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "GIF", "TIFF", "PPM", "TGA", "QOI")
# soundfile formats decoded by libsndfile; the others (MP3 included) go to FFmpeg.
SOUNDFILE_FORMATS = frozenset({"WAV", "WAVEX", "FLAC", "OGG", "AIFF", "W64", "RF64", "CAF", "AU"})
# formats whose header frame count is exact, so reading fewer frames means a truncated file.
EXACT_LENGTH_FORMATS = frozenset({"WAV", "WAVEX", "FLAC", "AIFF", "W64", "RF64", "CAF", "AU"})
# WAV subtypes whose data chunk holds block_align bytes per frame (not compressed blocks).
PCM_SUBTYPES = frozenset(
    {"PCM_U8", "PCM_S8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"}
)
# Clips longer than this are decoded by seeking to each target time instead of in one pass.
SEEK_AFTER_SECONDS = 30.0
# While seeking, a target closer than this to the last decoded frame is reached by decoding on.
SEEK_GAP_SECONDS = 2.0
INT16_SCALE = 32768.0  # int16 <-> float in [-1, 1], the convention of libsndfile and FFmpeg
WAV_MAX_CHUNKS = 64  # chunks walked in a WAV header before giving up on finding "data"
# Pillow's reasons for refusing a file (it raises SyntaxError for some broken PNGs).
_PILLOW_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
)


# ----------------------------------------------------------------------------- sources


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"{name}: expected a positive integer, got {value!r}")


def _read_source(source: Source) -> str | bytes:
    """A path that names a non-empty file (as str) or non-empty bytes; MediaError otherwise."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise MediaError("empty (0 bytes)")
        return data
    path = os.fsdecode(os.fspath(source))
    if not os.path.exists(path):
        raise MediaError("file does not exist")
    if not os.path.isfile(path):
        raise MediaError("not a file (a directory?)")
    if not os.access(path, os.R_OK):
        raise MediaError("the file is not readable (permission denied)")
    if os.path.getsize(path) == 0:
        raise MediaError("the file is empty (0 bytes)")
    return path


def _file_object(src: str | bytes) -> str | io.BytesIO:
    """What Pillow and soundfile open: the path itself, or a fresh stream over the bytes."""
    return io.BytesIO(src) if isinstance(src, bytes) else src


def _check_pixels(width: int, height: int, limits: Limits, what: str) -> None:
    if width * height > limits.max_pixels:
        raise MediaError(
            f"{what} is {width} x {height} = {width * height:,} pixels, over the limit of "
            f"{limits.max_pixels:,} pixels; raise it with --max-pixels"
        )


def _check_seconds(seconds: float, limits: Limits, what: str) -> None:
    if seconds > limits.max_seconds:
        raise MediaError(
            f"{what} lasts {seconds:,.1f} s, over the limit of {limits.max_seconds:,.1f} s; "
            "raise it with --max-seconds"
        )


# ----------------------------------------------------------------------------- images


def decode_image(source: Source, size: int, limits: Limits = Limits()) -> np.ndarray:
    """An image file (PNG, JPEG, WebP, BMP, GIF, TIFF, ...) -> uint8 [size, size, 3] RGB.

    EXIF orientation is applied; an animated image gives its first frame. See `fit_image`.
    """
    _check_positive("size", size)
    image = _load_image(_read_source(source), size, limits)
    try:
        return fit_image(image, size)
    except _PILLOW_ERRORS as err:
        raise MediaError(f"cannot convert its {image.mode} pixels to RGB ({err})") from None


def _load_image(src: str | bytes, size: int, limits: Limits) -> "PIL.Image.Image":
    """Opens, checks the header's size against the limit, decodes, applies EXIF orientation.

    A JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale whose sides are still at least
    2 * size (libjpeg's draft mode): a large photo decodes several times faster.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(_file_object(src), formats=IMAGE_FORMATS) as image:
            _check_pixels(*image.size, limits, "the image")
            image.draft(None, (2 * size, 2 * size))
            image.load()
            return ImageOps.exif_transpose(image)
    except MediaError:
        raise
    except Image.DecompressionBombError as err:
        raise MediaError(f"refused by Pillow as a decompression bomb ({err})") from None
    except _PILLOW_ERRORS as err:
        # Pillow names the path in this one; the caller already does.
        reason = "cannot identify image file" if isinstance(err, UnidentifiedImageError) else err
        raise MediaError(f"not an image Pillow can read ({reason})") from None


def fit_image(image: "PIL.Image.Image", size: int) -> np.ndarray:
    """A Pillow image of any mode -> uint8 [size, size, 3] RGB.

    Transparency is composited over white; 16-bit modes are scaled by 65535 -> 255, "F" is
    read as [0, 1]. The image is resized (bicubic, antialiased) so its shorter side is `size`,
    then centre-cropped to a square: both happen in one resize of the centred square box.
    """
    from PIL import Image

    _check_positive("size", size)
    rgb = _to_rgb(image)
    width, height = rgb.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    fitted = rgb.resize(
        (size, size),
        Image.Resampling.BICUBIC,
        box=(left, top, left + side, top + side),
        reducing_gap=3.0,
    )
    return np.array(fitted, np.uint8).reshape(size, size, 3)


def _to_rgb(image: "PIL.Image.Image") -> "PIL.Image.Image":
    """Any Pillow mode -> an RGB image (see `fit_image`)."""
    from PIL import Image

    mode = image.mode
    if mode == "I" or mode.startswith("I;16"):  # 16-bit PNG/TIFF; "I" is read as 16-bit too
        return _gray_to_rgb(np.asarray(image, np.float32) / 257.0)
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return _gray_to_rgb(np.clip(values, 0.0, 1.0) * 255.0)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


def _gray_to_rgb(levels: np.ndarray) -> "PIL.Image.Image":
    """float [H, W] levels on the 0-255 scale (clipped, rounded) -> an RGB image."""
    from PIL import Image

    gray = np.rint(np.clip(levels, 0.0, 255.0)).astype(np.uint8)
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB")


# ----------------------------------------------------------------------------- audio


def decode_audio(
    source: Source, sample_rate: int, length: int, limits: Limits = Limits()
) -> np.ndarray:
    """An audio file (WAV, FLAC, OGG, MP3, M4A, Opus, ...) -> int16 [length] mono at sample_rate.

    Channels are averaged; the first `length` samples are kept, a shorter file is zero-padded
    at the end. Only the part of the file those samples need is decoded.
    """
    _check_positive("sample_rate", sample_rate)
    _check_positive("length", length)
    src = _read_source(source)
    sound, soundfile_reason = _open_soundfile(src)
    if sound is None:
        wave, rate = _read_with_av(src, sample_rate, length, limits, soundfile_reason)
    else:
        with sound:
            wave, rate = _read_with_soundfile(sound, src, sample_rate, length, limits)
    return to_int16(fit_waveform(wave, rate, sample_rate, length))


def fit_waveform(wave: np.ndarray, rate: int, sample_rate: int, length: int) -> np.ndarray:
    """float mono [S] at `rate` -> float32 [length] at sample_rate (the shared audio step).

    Polyphase resampling (`audio_io.to_model_rate`), then the first `length` samples or zero
    padding at the end. No trimming, no normalisation.
    """
    wave = np.asarray(wave, np.float32)
    if wave.ndim != 1:
        raise InputError(f"audio: expected a mono waveform [S], got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise InputError("audio: expected finite samples, got NaN or infinity")
    _check_positive("rate", rate)
    _check_positive("sample_rate", sample_rate)
    _check_positive("length", length)
    resampled = to_model_rate(wave, rate, sample_rate)[:length]
    out = np.zeros(length, np.float32)
    out[: resampled.size] = resampled
    return out


def to_int16(wave: np.ndarray) -> np.ndarray:
    """float [...] in [-1, 1] (clipped) -> int16 [...]; the inverse of libsndfile's int16 reads."""
    wave = np.asarray(wave, np.float32)
    if not np.isfinite(wave).all():
        raise InputError("audio: expected finite samples, got NaN or infinity")
    scaled = np.rint(np.clip(wave, -1.0, 1.0) * INT16_SCALE)
    return np.clip(scaled, -INT16_SCALE, INT16_SCALE - 1).astype(np.int16)


def _source_samples_needed(length: int, rate: int, sample_rate: int) -> int:
    """Samples at `rate` that decide the first `length` samples at sample_rate.

    resample_poly's filter reaches 10 * max(up, down) samples of the up-sampled signal on
    each side, i.e. 10 * max(up, down) / up input samples past the last output's position.
    """
    if rate == sample_rate:
        return length
    g = math.gcd(rate, sample_rate)
    up, down = sample_rate // g, rate // g
    return math.ceil(length * rate / sample_rate) + math.ceil(10 * max(up, down) / up) + 2


def _mono(channels_last: np.ndarray) -> np.ndarray:
    """float [S, C] -> float32 [S], the mean of the channels; MediaError on NaN/infinity."""
    wave = channels_last.mean(axis=1, dtype=np.float32)
    if wave.size == 0:
        raise MediaError("holds no samples")
    if not np.isfinite(wave).all():
        raise MediaError("holds non-finite samples (NaN or infinity)")
    return wave


def _soundfile_reason(err: BaseException) -> str:
    return getattr(err, "error_string", None) or str(err)


def _open_soundfile(src: str | bytes) -> tuple[Any, str]:
    """(an open soundfile.SoundFile, "") for a format libsndfile decodes well, else (None, why)."""
    import soundfile

    if _is_mpeg_audio(src):
        return None, "MPEG audio is left to FFmpeg"
    try:
        sound = soundfile.SoundFile(_file_object(src))
    except (soundfile.SoundFileError, RuntimeError, TypeError) as err:
        return None, _soundfile_reason(err)
    if sound.format not in SOUNDFILE_FORMATS:
        sound.close()
        return None, f"{sound.format} is left to FFmpeg"
    return sound, ""


def _is_mpeg_audio(src: str | bytes) -> bool:
    """Whether it starts like an MP3 (an ID3 tag or a frame sync) or an ADTS AAC stream.

    libsndfile would open an MP3 too, but prints mpg123's warnings and counts frames roughly.
    """
    if isinstance(src, str):
        with open(src, "rb") as f:
            src = f.read(3)
    return src[:3] == b"ID3" or (len(src) >= 2 and src[0] == 0xFF and src[1] & 0xE0 == 0xE0)


def _read_with_soundfile(
    sound: Any, src: str | bytes, sample_rate: int, length: int, limits: Limits
) -> tuple[np.ndarray, int]:
    """An open SoundFile -> (float32 mono [S], its rate): the samples `length` needs."""
    import soundfile

    if sound.samplerate <= 0:
        raise MediaError(f"the header declares a sample rate of {sound.samplerate}")
    _check_seconds(sound.frames / sound.samplerate, limits, "the audio")
    if sound.format in ("WAV", "WAVEX") and sound.subtype in PCM_SUBTYPES:
        declared = _wav_declared_frames(src)
        if declared is not None and declared > sound.frames:
            raise _truncated(declared, sound.frames)
    if sound.frames == 0:
        raise MediaError("holds no samples")
    wanted = min(sound.frames, _source_samples_needed(length, sound.samplerate, sample_rate))
    try:
        samples = sound.read(wanted, dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError) as err:
        raise MediaError(
            f"cannot decode its {sound.format} samples ({_soundfile_reason(err)}); "
            "is the file truncated?"
        ) from None
    if len(samples) < wanted and sound.format in EXACT_LENGTH_FORMATS:
        raise _truncated(sound.frames, len(samples))
    return _mono(samples), sound.samplerate


def _truncated(declared: int, held: int) -> MediaError:
    return MediaError(f"truncated: the header declares {declared} samples, the file holds {held}")


def _wav_declared_frames(src: str | bytes) -> int | None:
    """Frames the data chunk of a RIFF/RIFX WAV header declares; None when it does not say.

    libsndfile silently shortens a WAV whose data chunk is cut, so this is compared with the
    frames it finds. A size of 0 or 0xFFFFFFFF (written by streaming encoders) says nothing.
    """
    with open(src, "rb") if isinstance(src, str) else io.BytesIO(src) as f:
        riff = f.read(12)
        endian = {b"RIFF": "<", b"RIFX": ">"}.get(riff[:4])
        if endian is None or riff[8:12] != b"WAVE":
            return None
        block_align = 0
        for _ in range(WAV_MAX_CHUNKS):
            head = f.read(8)
            if len(head) < 8:
                return None
            chunk_id, (chunk_size,) = head[:4], struct.unpack(endian + "I", head[4:])
            if chunk_id == b"data":
                if block_align == 0 or chunk_size in (0, 0xFFFFFFFF):
                    return None
                return chunk_size // block_align
            body = f.read(min(chunk_size, 16)) if chunk_id == b"fmt " else b""
            if len(body) >= 14:
                (block_align,) = struct.unpack(endian + "H", body[12:14])
            f.seek(chunk_size - len(body) + chunk_size % 2, io.SEEK_CUR)
    return None


def _read_with_av(
    src: str | bytes, sample_rate: int, length: int, limits: Limits, soundfile_reason: str
) -> tuple[np.ndarray, int]:
    """FFmpeg's decoding of an audio file -> (float32 mono [S], its rate), as `length` needs."""
    av = _import_av()
    try:
        container = _open_container(src)
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise MediaError(
            f"not an audio file soundfile or FFmpeg can read (soundfile: {soundfile_reason}; "
            f"FFmpeg: {_ffmpeg_reason(err)})"
        ) from None
    with container:
        if not container.streams.audio:
            raise MediaError(f"no audio stream (FFmpeg reads it as {container.format.name})")
        _check_container_seconds(container, limits, "the audio")
        return _decode_audio_track(container, container.streams.audio[0], sample_rate, length)


# ----------------------------------------------------------------------------- PyAV helpers


def _import_av() -> Any:
    try:
        import av
    except ImportError:
        raise ImportError("decoding this file needs PyAV (FFmpeg): pip install av") from None
    return av


def _ffmpeg_reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err)


def _open_container(src: str | bytes) -> Any:
    """An av InputContainer. A path gets the "file:" protocol, never another FFmpeg protocol."""
    av = _import_av()
    if isinstance(src, bytes):
        return av.open(io.BytesIO(src), "r")
    return av.open("file:" + os.path.abspath(src), "r")


def _check_container_seconds(container: Any, limits: Limits, what: str) -> None:
    if container.duration is not None and container.duration > 0:
        _check_seconds(container.duration / 1_000_000, limits, what)


def _decode_audio_track(
    container: Any, stream: Any, sample_rate: int, length: int
) -> tuple[np.ndarray, int]:
    """Decodes `stream` from the container's start -> (float32 mono [S], its own rate).

    Decoding stops once the samples that the first `length` at sample_rate need are there.
    """
    av = _import_av()
    resampler = av.AudioResampler(format="fltp")  # keeps the first frame's layout and rate
    chunks: list[np.ndarray] = []
    held, needed, rate = 0, None, 0
    try:
        for packet in container.demux(stream):
            for frame in _resampled(resampler, packet.decode()):
                if needed is None:
                    rate = frame.sample_rate
                    needed = _source_samples_needed(length, rate, sample_rate)
                chunks.append(frame.to_ndarray().T)  # planar [C, n] -> [n, C]
                held += frame.samples
            if needed is not None and held >= needed:
                break
        else:
            for frame in resampler.resample(None):
                chunks.append(frame.to_ndarray().T)
    except (av.error.FFmpegError, ValueError) as err:
        raise MediaError(f"FFmpeg cannot decode its audio ({_ffmpeg_reason(err)})") from None
    if not chunks or rate <= 0:
        raise MediaError("holds no samples (no audio frame decodes)")
    return _mono(np.concatenate(chunks)), rate


def _resampled(resampler: Any, frames: Iterable[Any]) -> Iterable[Any]:
    for frame in frames:
        yield from resampler.resample(frame)


# ----------------------------------------------------------------------------- video


def decode_video(
    source: Source,
    frames: int,
    size: int,
    *,
    sample_rate: int | None = None,
    audio_length: int | None = None,
    limits: Limits = Limits(),
) -> tuple[np.ndarray, np.ndarray | None]:
    """A video clip (MP4, WebM, MKV, MOV, AVI) -> (uint8 [frames, size, size, 3],
    int16 [audio_length] of the clip's own audio track, or None when sample_rate is None or
    the clip has no audio stream).

    Frame i is the frame on screen at time (i + 0.5) * duration / frames after the first
    frame: the last decoded frame whose timestamp is at or before it. The duration is the
    video stream's (from its header, else from its packets' timestamps). A clip with fewer
    frames than asked for thus repeats frames, each in its place in time. A frame is turned
    as its display matrix says (see `_displayed`), then goes through `fit_image`. Clips up to
    SEEK_AFTER_SECONDS are decoded in one pass, longer ones by seeking. The audio track is
    decoded from its own start, as in `decode_audio`.
    """
    _check_positive("frames", frames)
    _check_positive("size", size)
    if (sample_rate is None) != (audio_length is None):
        raise ConfigError(
            "decode_video: expected both sample_rate and audio_length, or neither; got "
            f"sample_rate={sample_rate!r}, audio_length={audio_length!r}"
        )
    if sample_rate is not None:
        _check_positive("sample_rate", sample_rate)
        _check_positive("audio_length", audio_length)
    src = _read_source(source)
    av = _import_av()
    try:
        video_frames, has_audio = _decode_frames(src, frames, size, limits)
        if sample_rate is None or not has_audio:
            return video_frames, None
        with _open_container(src) as container:
            stream = container.streams.audio[0]
            wave, rate = _decode_audio_track(container, stream, sample_rate, audio_length)
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise MediaError(f"not a video FFmpeg can decode ({_ffmpeg_reason(err)})") from None
    return video_frames, to_int16(fit_waveform(wave, rate, sample_rate, audio_length))


def _decode_frames(
    src: str | bytes, frames: int, size: int, limits: Limits
) -> tuple[np.ndarray, bool]:
    """-> (uint8 [frames, size, size, 3], whether the clip has an audio stream)."""
    with _open_container(src) as container:
        video = _video_stream(container, limits)
        has_audio = bool(container.streams.audio)
        duration = _duration_from_metadata(video)
        if duration is not None:
            return _pick_frames(container, video, duration, frames, size, limits), has_audio
        duration = _duration_from_packets(container, video, limits)
    with _open_container(src) as container:  # the packet scan read it to the end
        video = container.streams.video[0]
        return _pick_frames(container, video, duration, frames, size, limits), has_audio


def _video_stream(container: Any, limits: Limits) -> Any:
    """The first video stream, its frame size and the duration checked against the limits."""
    if not container.streams.video:
        raise MediaError("no video stream")
    video = container.streams.video[0]
    _check_pixels(video.codec_context.width, video.codec_context.height, limits, "a frame")
    _check_container_seconds(container, limits, "the clip")
    return video


def _duration_from_metadata(video: Any) -> float | None:
    """The video stream's duration in seconds from its header (MP4, MOV, AVI have one)."""
    if not video.duration or video.duration <= 0 or video.time_base is None:
        return None
    return float(video.duration * video.time_base)


def _duration_from_packets(container: Any, video: Any, limits: Limits) -> float:
    """The video's duration in seconds from its packets' timestamps (read, not decoded)."""
    first = end = None
    count = 0
    for packet in container.demux(video):
        if packet.size == 0:
            continue
        count += 1
        if packet.pts is None or packet.time_base is None:
            continue
        start = float(packet.pts * packet.time_base)
        stop = start + float((packet.duration or 0) * packet.time_base)
        first = start if first is None else min(first, start)
        end = stop if end is None else max(end, stop)
        _check_seconds(end - first, limits, "the clip")
    if first is None:  # no timestamps at all: count frames at the nominal rate
        return count / _nominal_rate(video)
    return end - first


def _nominal_rate(video: Any) -> float:
    rate = video.average_rate or video.guessed_rate or video.base_rate
    return float(rate) if rate else 25.0


def _pick_frames(
    container: Any, video: Any, duration: float, frames: int, size: int, limits: Limits
) -> np.ndarray:
    """uint8 [frames, size, size, 3]: the frames on screen at the target times."""
    _check_seconds(duration, limits, "the clip")
    offsets = [(i + 0.5) * duration / frames for i in range(frames)]
    picker = _FramePicker(offsets, size, limits, _nominal_rate(video))
    if duration > SEEK_AFTER_SECONDS:
        _decode_by_seeking(container, video, picker)
    else:
        _decode_in_order(container, video, picker)
    return picker.result()


class _FramePicker:
    """Takes decoded frames in display order; keeps, for each target time, the fitted frame on
    screen then (the last one at or before it, or the first frame for a time before any).

    Target times are offsets from the first decoded frame's timestamp, which is where the
    video starts (AVI's H.264 frames, for one, start a frame after the stream's start_time).
    """

    def __init__(self, offsets: list[float], size: int, limits: Limits, rate: float) -> None:
        self.offsets, self.size, self.limits, self.rate = offsets, size, limits, rate
        self.picks: list[np.ndarray] = []
        self.seen = 0
        self.origin: float | None = None  # the first frame's time
        self.last_time = 0.0
        self._previous: Any = None
        self._previous_fitted: np.ndarray | None = None

    @property
    def done(self) -> bool:
        return len(self.picks) == len(self.offsets)

    @property
    def next_target(self) -> float:
        """The next target time (only once a frame has set the origin)."""
        return self.origin + self.offsets[len(self.picks)]

    def offer(self, frame: Any) -> None:
        """One decoded frame, in display order."""
        _check_pixels(frame.width, frame.height, self.limits, "a frame")
        time = frame.time if frame.time is not None else self.seen / self.rate
        if self.origin is None:
            self.origin = time
        _check_seconds(time - self.origin, self.limits, "the clip")
        self.seen += 1
        self.last_time = time
        while not self.done and time > self.next_target:
            self.picks.append(self._fitted_previous())
        self._previous, self._previous_fitted = frame, None

    def _fitted_previous(self) -> np.ndarray:
        if self._previous_fitted is None:
            self._previous_fitted = fit_image(_displayed(self._previous), self.size)
        return self._previous_fitted

    def result(self) -> np.ndarray:
        """uint8 [frames, size, size, 3]; targets past the last frame get the last frame."""
        if self._previous is None:
            raise MediaError("no video frame decodes")
        while not self.done:
            self.picks.append(self._fitted_previous())
        return np.stack(self.picks)


def _displayed(frame: Any) -> "PIL.Image.Image":
    """A decoded frame as shown: turned by its display matrix (phone clips are stored sideways).

    The matrix's rotation is counterclockwise; it is rounded to a quarter turn, flips ignored.
    """
    image = frame.to_image()
    quarter_turns = round((frame.rotation or 0) / 90) % 4
    # Pillow turns counterclockwise; by quarter turns with expand=True it only transposes.
    return image.rotate(90 * quarter_turns, expand=True) if quarter_turns else image


def _decode_in_order(container: Any, video: Any, picker: _FramePicker) -> None:
    for frame in container.decode(video):
        picker.offer(frame)
        if picker.done:
            return


def _decode_by_seeking(container: Any, video: Any, picker: _FramePicker) -> None:
    """Seeks to the keyframe before each target, unless the target is close ahead.

    The first frame is decoded from the start, to set the origin of the target times.
    """
    for frame in container.decode(video):
        picker.offer(frame)
        break
    while picker.seen and not picker.done:
        target = picker.next_target
        if not 0 <= target - picker.last_time < SEEK_GAP_SECONDS:
            container.seek(int(target / video.time_base), stream=video, backward=True)
        picked = len(picker.picks)
        for frame in container.decode(video):
            picker.offer(frame)
            if len(picker.picks) > picked:
                break
        else:
            return  # the end of the stream: `result` repeats the last frame


# ----------------------------------------------------------------------------- text


def read_text(source: Source) -> str:
    """A .txt file (UTF-8, a byte-order mark tolerated) -> its text, stripped.

    MediaError when it is not UTF-8 or holds only whitespace.
    """
    src = _read_source(source)
    if isinstance(src, str):
        try:
            with open(src, "rb") as f:
                src = f.read()
        except OSError as err:
            raise MediaError(f"cannot read the file ({err.strerror})") from None
    try:
        text = src.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise MediaError(
            f"not UTF-8 text (byte 0x{src[err.start]:02x} at offset {err.start} is invalid); "
            "expected a UTF-8 text file"
        ) from None
    text = text.strip()
    if not text:
        raise MediaError("holds no text (only whitespace)")
    return text
