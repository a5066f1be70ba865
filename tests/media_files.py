"""Real media files for the decoder tests, written cheaply from data already on this machine.

Images come from scikit-image's photographs and scikit-learn's digits, audio from the
Asterisk digit recordings (8 kHz speech), video is a pan over the chelsea photograph encoded
with PyAV. `write_media` writes them all (about a second); `write_clip` makes one clip.
"""

import fractions
import struct
import zlib
from pathlib import Path

import av
import numpy as np
import soundfile
from PIL import Image
from scipy.signal import resample_poly
from skimage import data as skimage_data
from sklearn.datasets import load_digits

DIGITS_DIR = Path("/usr/share/asterisk/sounds/en/digits")
CLIP_FPS = 12
CLIP_FRAMES = 24  # 2 s
CLIP_HEIGHT, CLIP_WIDTH = 72, 96
PAN_STEP = 12  # pixels the window moves right per frame
CLIP_SAMPLE_RATE = 16_000
WAV_RATE = 16_000


def digit_recording(n: int) -> tuple[np.ndarray, int]:
    """The spoken digit n (a real recording) -> float32 [S] mono, its sample rate (8 kHz)."""
    wave, rate = soundfile.read(DIGITS_DIR / f"{n}.wav", dtype="float32", always_2d=True)
    return wave.mean(axis=1), rate


def pan_frames() -> np.ndarray:
    """uint8 [CLIP_FRAMES, CLIP_HEIGHT, CLIP_WIDTH, 3]: a window panning right over chelsea."""
    cat = skimage_data.chelsea()
    return np.stack(
        [
            cat[100 : 100 + CLIP_HEIGHT, PAN_STEP * t : PAN_STEP * t + CLIP_WIDTH]
            for t in range(CLIP_FRAMES)
        ]
    )


def clip_audio() -> np.ndarray:
    """float32 [2 s at CLIP_SAMPLE_RATE]: the digits 1 and 2 spoken one after the other."""
    speech = np.concatenate([digit_recording(1)[0], digit_recording(2)[0]])
    wave = resample_poly(speech, CLIP_SAMPLE_RATE // 8000, 1).astype(np.float32)
    return _fit(wave, CLIP_FRAMES * CLIP_SAMPLE_RATE // CLIP_FPS)


def stereo_wave() -> np.ndarray:
    """float32 [S, 2] at WAV_RATE: digit 1 on the left, digit 2 at half volume on the right."""
    left, right = (resample_poly(digit_recording(n)[0], 2, 1) for n in (1, 2))
    size = max(left.size, right.size)
    return np.stack([_fit(left, size), 0.5 * _fit(right, size)], axis=1).astype(np.float32)


def _fit(wave: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(size, np.float32)
    out[: min(size, wave.size)] = wave[:size]
    return out


def write_clip(
    path: Path,
    frames_uint8: np.ndarray,
    fps: int,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    *,
    rotation: int = 0,
    keyframe_every: int | None = None,
) -> Path:
    """uint8 [T, H, W, 3] (H, W even) and optional float mono audio -> a clip at `path`.

    .webm gets VP9 (+ Opus), any other suffix H.264 (+ AAC). Quality is high, so a decoded
    frame stays close to its source. `rotation` (degrees counterclockwise) goes into the
    display matrix, as phones write it; `keyframe_every` frames sets the GOP size.
    """
    webm = Path(path).suffix == ".webm"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libvpx-vp9" if webm else "libx264", rate=fps)
        video.width, video.height = frames_uint8.shape[2], frames_uint8.shape[1]
        video.pix_fmt = "yuv420p"
        if rotation:
            video.set_display_rotation(rotation)
        if keyframe_every:
            video.options |= {"g": str(keyframe_every), "keyint_min": str(keyframe_every)}
        video.options = (
            {"crf": "10", "b": "0", "deadline": "realtime", "cpu-used": "8"}
            if webm
            else {"crf": "8", "preset": "veryfast"}
        )
        sound = None
        if audio is not None:
            sound = container.add_stream("libopus" if webm else "aac", rate=sample_rate)
            sound.layout = "mono"
        for t, pixels in enumerate(frames_uint8):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            frame.pts, frame.time_base = t, fractions.Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            _encode_audio(container, sound, audio, sample_rate)
    return Path(path)


def write_encoded_audio(path: Path, wave: np.ndarray, sample_rate: int) -> Path:
    """float mono [S] -> an audio-only file: .m4a (AAC), .mp3 (LAME) or .opus (Opus)."""
    codec = {".m4a": "aac", ".mp3": "libmp3lame", ".opus": "libopus"}[Path(path).suffix]
    with av.open(str(path), "w") as container:
        sound = container.add_stream(codec, rate=sample_rate)
        sound.layout = "mono"
        _encode_audio(container, sound, wave, sample_rate)
    return Path(path)


def _encode_audio(container, stream, wave: np.ndarray, sample_rate: int) -> None:
    # pts 0 lets the encoder shift its priming samples to negative times (an edit list in
    # MP4), so decoders drop them and the track starts with the first sample written.
    frame = av.AudioFrame.from_ndarray(
        np.asarray(wave, np.float32)[None], format="flt", layout="mono"
    )
    frame.sample_rate, frame.pts = sample_rate, 0
    frame.time_base = fractions.Fraction(1, sample_rate)
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def png_bomb_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (8-bit gray) and that holds no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def write_media(directory: Path) -> dict[str, Path]:
    """Writes every test file into `directory` -> {key: path}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    files |= _write_images(directory)
    files |= _write_audio(directory)
    files |= _write_video(directory)
    files |= _write_text(directory)
    return files


def _save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def _write_images(d: Path) -> dict[str, Path]:
    cat, coffee = skimage_data.chelsea(), skimage_data.coffee()  # 300 x 451, 400 x 600
    cat_image = Image.fromarray(cat)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    alpha = np.full(cat.shape[:2], 255, np.uint8)
    alpha[:, :150] = 0  # the left third fully transparent
    alpha[:, 150:300] = 128
    gray = coffee.mean(axis=2) / 255.0
    digits = load_digits().images  # [1797, 8, 8] in 0..16
    digit_frames = [
        Image.fromarray(np.kron(digits[i] * 15, np.ones((4, 4))).astype(np.uint8), "L")
        for i in range(3)
    ]
    files = {
        "png": _save(cat_image, d / "cat.png", compress_level=1),
        "jpeg": _save(Image.fromarray(coffee), d / "coffee.jpg", quality=95),
        "jpeg_exif_rotated": _save(
            Image.fromarray(coffee), d / "coffee_rotated.jpg", quality=95, exif=exif
        ),
        "webp": _save(cat_image, d / "cat.webp", quality=90),
        "png_rgba": _save(
            Image.fromarray(np.dstack([cat, alpha]), "RGBA"), d / "cat_rgba.png", compress_level=1
        ),
        "png_palette": _save(cat_image.quantize(64), d / "cat_palette.png", compress_level=1),
        "png_16bit": _save(
            Image.fromarray(np.rint(gray * 65535).astype(np.uint16)), d / "coffee_16bit.png"
        ),
        "png_gray": _save(
            Image.fromarray(np.rint(gray * 255).astype(np.uint8), "L"), d / "coffee_gray.png"
        ),
        "tiff_cmyk": _save(cat_image.convert("CMYK"), d / "cat_cmyk.tiff"),
        "bmp": _save(digit_frames[0], d / "digit.bmp"),
        "gif_animated": _save(
            digit_frames[0],
            d / "digits.gif",
            save_all=True,
            append_images=digit_frames[1:],
            duration=100,
        ),
    }
    png = files["png"].read_bytes()
    files["png_truncated"] = d / "cat_truncated.png"
    files["png_truncated"].write_bytes(png[: len(png) // 2])
    files["jpeg_garbage"] = d / "garbage.jpg"
    files["jpeg_garbage"].write_bytes(np.random.default_rng(0).bytes(4000))
    files["png_bomb"] = d / "bomb.png"
    files["png_bomb"].write_bytes(png_bomb_header(30_000, 30_000))
    return files


def _write_audio(d: Path) -> dict[str, Path]:
    files = {
        "wav": d / "stereo_16k.wav",
        "wav_8k": d / "digit5_8k.wav",
        "flac": d / "digit3.flac",
        "ogg": d / "digit4.ogg",
        "wav_empty": d / "empty.wav",
        "wav_nan": d / "nan.wav",
    }
    soundfile.write(files["wav"], stereo_wave(), WAV_RATE, subtype="PCM_16")
    soundfile.write(files["wav_8k"], *digit_recording(5), subtype="PCM_16")
    soundfile.write(files["flac"], *digit_recording(3))
    soundfile.write(files["ogg"], *digit_recording(4), format="OGG", subtype="VORBIS")
    soundfile.write(files["wav_empty"], np.zeros((0, 1), np.float32), 8000, subtype="PCM_16")
    nan_wave = digit_recording(6)[0]
    nan_wave[100] = np.nan
    soundfile.write(files["wav_nan"], nan_wave, 8000, subtype="FLOAT")
    files["m4a_audio_only"] = write_encoded_audio(d / "digit7.m4a", *_at_16k(7))
    files["mp3"] = write_encoded_audio(d / "digit8.mp3", *_at_16k(8))
    files["opus"] = write_encoded_audio(d / "digit9.opus", *_at_16k(9))
    wav = files["wav"].read_bytes()
    files["wav_truncated_header"] = d / "truncated_header.wav"
    files["wav_truncated_header"].write_bytes(wav[:30])
    files["wav_truncated_data"] = d / "truncated_data.wav"
    files["wav_truncated_data"].write_bytes(wav[: len(wav) // 2 + 1])
    flac = files["flac"].read_bytes()
    files["flac_truncated"] = d / "truncated.flac"
    files["flac_truncated"].write_bytes(flac[: len(flac) // 2])
    return files


def _at_16k(n: int) -> tuple[np.ndarray, int]:
    wave, rate = digit_recording(n)
    return resample_poly(wave, 16_000 // rate, 1).astype(np.float32), 16_000


def _write_video(d: Path) -> dict[str, Path]:
    frames, audio = pan_frames(), clip_audio()
    files = {
        "mp4_av": write_clip(d / "pan_av.mp4", frames, CLIP_FPS, audio, CLIP_SAMPLE_RATE),
        "mp4_silent": write_clip(d / "pan_silent.mp4", frames, CLIP_FPS),
        "webm_av": write_clip(d / "pan_av.webm", frames, CLIP_FPS, audio, CLIP_SAMPLE_RATE),
        "webm_silent": write_clip(d / "pan_silent.webm", frames, CLIP_FPS),
    }
    mp4 = files["mp4_av"].read_bytes()
    files["mp4_truncated"] = d / "truncated.mp4"
    files["mp4_truncated"].write_bytes(mp4[: len(mp4) // 2])  # the index (moov) is at the end
    files["mp4_garbage"] = d / "garbage.mp4"
    files["mp4_garbage"].write_bytes(np.random.default_rng(1).bytes(5000))
    return files


def _write_text(d: Path) -> dict[str, Path]:
    files = {"txt": d / "caption.txt", "txt_bom": d / "caption_bom.txt"}
    files["txt"].write_text("  a café cat — naïve 🐱\n", encoding="utf-8")
    files["txt_bom"].write_text("a cat\n", encoding="utf-8-sig")
    files["txt_latin1"] = d / "caption_latin1.txt"
    files["txt_latin1"].write_bytes("a café cat".encode("latin-1"))
    return files
