"""mmjax.data.media: real image, audio, video and text files decode to fixed-shape arrays, and
broken or oversized ones are refused with a reason."""

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image
from scipy.signal import resample_poly
from skimage import data as skimage_data

from mmjax.data import media
from mmjax.data.media import (
    EXTENSIONS,
    Limits,
    MediaError,
    decode_audio,
    decode_image,
    decode_video,
    fit_image,
    fit_waveform,
    read_text,
    to_int16,
)
from mmjax.errors import ConfigError, DataError
from tests.media_files import (
    CLIP_FPS,
    CLIP_FRAMES,
    CLIP_SAMPLE_RATE,
    clip_audio,
    digit_recording,
    pan_frames,
    write_clip,
    write_media,
)

IMAGES = [
    "png",
    "jpeg",
    "jpeg_exif_rotated",
    "webp",
    "png_rgba",
    "png_palette",
    "png_16bit",
    "png_gray",
    "tiff_cmyk",
    "bmp",
    "gif_animated",
]
AUDIO = ["wav", "wav_8k", "flac", "ogg", "m4a_audio_only", "mp3", "opus", "mp4_av"]
CLIPS = {"mp4_av": True, "mp4_silent": False, "webm_av": True, "webm_silent": False}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_media(tmp_path_factory.mktemp("media"))


def mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 arrays, in levels."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def int16_of(wave: np.ndarray, length: int) -> np.ndarray:
    """A float reference waveform cut or zero-padded to `length`, as int16."""
    out = np.zeros(length, np.float32)
    out[: min(length, wave.size)] = wave[:length]
    return to_int16(out)


def test_extensions_name_a_modality_for_each_suffix():
    assert EXTENSIONS[".jpeg"] == "image" and EXTENSIONS[".tiff"] == "image"
    assert EXTENSIONS[".opus"] == "audio" and EXTENSIONS[".m4a"] == "audio"
    assert EXTENSIONS[".mkv"] == "video" and EXTENSIONS[".txt"] == "text"
    assert all(suffix == suffix.lower() and suffix[0] == "." for suffix in EXTENSIONS)
    assert issubclass(MediaError, DataError)


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize("key", IMAGES)
def test_every_image_decodes_to_an_rgb_square_from_path_or_bytes(files, key):
    image = decode_image(files[key], 48)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert image.std() > 5  # real content, not a flat fill
    np.testing.assert_array_equal(decode_image(files[key].read_bytes(), 48), image)


def test_exif_orientation_turns_a_landscape_photo_to_portrait(files):
    coffee = skimage_data.coffee()  # 400 x 600 landscape; EXIF 6 = turn 90 degrees clockwise
    portrait = fit_image(Image.fromarray(np.rot90(coffee, k=-1)), 64)
    landscape = fit_image(Image.fromarray(coffee), 64)
    decoded = decode_image(files["jpeg_exif_rotated"], 64)
    assert mad(decoded, portrait) < 3 < 20 < mad(decoded, landscape)
    assert mad(decode_image(files["jpeg"], 64), landscape) < 3  # no EXIF: as stored


def test_transparent_pixels_are_composited_over_white(files):
    decoded = decode_image(files["png_rgba"], 64)
    # The left 150 of 451 columns are fully transparent; the centre square starts at 75.5.
    assert (decoded[:, :14] == 255).all()
    cat = skimage_data.chelsea().astype(np.float32)
    alpha = np.full(cat.shape[:2], 1.0, np.float32)
    alpha[:, :150], alpha[:, 150:300] = 0.0, 128 / 255
    over_white = cat * alpha[..., None] + 255.0 * (1 - alpha[..., None])
    reference = fit_image(Image.fromarray(np.rint(over_white).astype(np.uint8)), 64)
    assert np.abs(decoded.astype(int) - reference).max() <= 1


def test_palette_cmyk_and_animated_images_match_their_rgb_versions(files):
    with Image.open(files["png_palette"]) as palette:
        assert palette.mode == "P"
        expected = fit_image(palette.convert("RGB"), 64)
    np.testing.assert_array_equal(decode_image(files["png_palette"], 64), expected)
    cmyk = decode_image(files["tiff_cmyk"], 64).astype(int)
    assert np.abs(cmyk - decode_image(files["png"], 64)).max() <= 1
    first = decode_image(files["gif_animated"], 32)  # its frame 0 is the BMP's digit
    np.testing.assert_array_equal(first, decode_image(files["bmp"], 32))


def test_16bit_png_equals_the_8bit_version_within_one_level(files):
    with Image.open(files["png_16bit"]) as wide:
        assert wide.mode.startswith("I")
    sixteen, eight = decode_image(files["png_16bit"], 64), decode_image(files["png_gray"], 64)
    assert np.abs(sixteen.astype(int) - eight).max() <= 1


def test_resize_keeps_the_aspect_and_crops_the_centre(files):
    cat = Image.fromarray(skimage_data.chelsea())  # 451 wide, 300 high
    resized = np.asarray(cat.resize((150, 100), Image.Resampling.BICUBIC))
    reference = resized[:, 25:125]
    decoded = decode_image(files["png"], 100)
    squashed = np.asarray(cat.resize((100, 100), Image.Resampling.BICUBIC))
    assert mad(decoded, reference) < 3 < 10 < mad(decoded, squashed)


@pytest.mark.parametrize(
    ("mode", "pixels", "expected"),
    [
        ("I;16", np.full((4, 6), 65535, np.uint16), 255),
        ("I;16", np.full((4, 6), 257 * 100, np.uint16), 100),
        ("I", np.full((4, 6), 70000, np.int32), 255),  # "I" is read as 16-bit, clipped
        ("F", np.full((4, 6), 0.5, np.float32), 128),
        ("F", np.full((4, 6), 7.0, np.float32), 255),
        ("L", np.full((4, 6), 37, np.uint8), 37),
        ("1", np.ones((4, 6), bool), 255),
    ],
)
def test_fit_image_scales_every_mode_to_8bit_rgb(mode, pixels, expected):
    image = Image.fromarray(pixels).convert(mode) if mode != "I;16" else Image.fromarray(pixels)
    assert image.mode == mode
    out = fit_image(image, 8)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert (out == expected).all()


def test_fit_image_converts_cmyk_ycbcr_and_transparent_palette():
    rgb = Image.fromarray(skimage_data.chelsea()[:64, :96])
    expected = fit_image(rgb, 32)
    assert np.abs(fit_image(rgb.convert("CMYK"), 32).astype(int) - expected).max() <= 1
    assert mad(fit_image(rgb.convert("YCbCr"), 32), expected) < 2
    palette = rgb.quantize(16)
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])
    white = np.asarray(palette) == np.asarray(palette)[0, 0]
    converted = np.asarray(palette.convert("RGBA").convert("RGB"))
    assert (np.asarray(media._to_rgb(palette))[white] == 255).all()
    assert not (converted[white] == 255).all()  # a plain convert would not whiten them


# ----------------------------------------------------------------------------- audio


@pytest.mark.parametrize("key", AUDIO)
def test_every_audio_file_decodes_to_int16_at_the_asked_rate(files, key):
    wave = decode_audio(files[key], 8000, 6000)
    assert wave.shape == (6000,) and wave.dtype == np.int16
    assert np.abs(wave).max() > 1000  # speech, not silence
    np.testing.assert_array_equal(decode_audio(files[key].read_bytes(), 8000, 6000), wave)


def test_resampling_is_resample_poly_of_the_channel_mean(files):
    stereo, rate = soundfile.read(files["wav"], dtype="float32", always_2d=True)
    assert rate == 16_000 and stereo.shape[1] == 2
    mono = stereo.mean(axis=1)
    expected = int16_of(resample_poly(mono, 1, 2), 8000)
    assert np.abs(decode_audio(files["wav"], 8000, 8000).astype(int) - expected).max() <= 1
    up = int16_of(resample_poly(digit_recording(5)[0], 2, 1), 20_000)
    assert np.abs(decode_audio(files["wav_8k"], 16_000, 20_000).astype(int) - up).max() <= 1


@pytest.mark.parametrize("sample_rate", [8000, 22_050, 44_100])
def test_reading_only_the_needed_prefix_changes_nothing(files, sample_rate):
    mono = soundfile.read(files["wav"], dtype="float32", always_2d=True)[0].mean(axis=1)
    length = sample_rate // 4  # a quarter second of a ~0.9 s file
    full = to_int16(fit_waveform(mono, 16_000, sample_rate, length))
    np.testing.assert_array_equal(decode_audio(files["wav"], sample_rate, length), full)


def test_length_is_cropped_or_zero_padded_at_the_end_exactly(files):
    source = to_int16(digit_recording(5)[0])  # 8 kHz int16, read back exactly
    short = decode_audio(files["wav_8k"], 8000, source.size - 100)
    np.testing.assert_array_equal(short, source[:-100])
    long = decode_audio(files["wav_8k"], 8000, source.size + 500)
    np.testing.assert_array_equal(long[: source.size], source)
    assert (long[source.size :] == 0).all()
    flac = decode_audio(files["flac"], 8000, 4000)  # lossless
    np.testing.assert_array_equal(flac, to_int16(digit_recording(3)[0])[:4000])


def handmade_wav(declared_bytes: int, frames: int) -> bytes:
    """A stereo 16-bit WAV with an odd-sized chunk before "data" that declares declared_bytes."""
    fmt = struct.pack("<HHIIHH", 1, 2, 8000, 8000 * 4, 4, 16)
    payload = (np.arange(2 * frames, dtype="<i2") * 100).tobytes()
    chunks = b"fmt " + struct.pack("<I", 16) + fmt + b"LIST" + struct.pack("<I", 3) + b"abc\0"
    chunks += b"data" + struct.pack("<I", declared_bytes) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def test_a_wav_header_declaring_more_than_the_file_holds_is_truncated():
    whole = decode_audio(handmade_wav(400, 100), 8000, 120)
    np.testing.assert_array_equal(whole[:100], np.arange(100) * 200 + 50)  # mean of L and R
    with pytest.raises(MediaError, match="the header declares 200 samples, the file holds 100"):
        decode_audio(handmade_wav(800, 100), 8000, 120)
    streamed = decode_audio(handmade_wav(0xFFFFFFFF, 100), 8000, 120)  # size left unknown
    np.testing.assert_array_equal(streamed, whole)


@pytest.mark.parametrize(("key", "digit"), [("ogg", 4), ("m4a_audio_only", 7), ("opus", 9)])
def test_lossy_audio_is_close_to_its_source_without_delay(files, key, digit):
    decoded = decode_audio(files[key], 8000, 6000).astype(np.float32)
    source = int16_of(digit_recording(digit)[0], 6000).astype(np.float32)
    assert np.corrcoef(decoded, source)[0, 1] > 0.99


def test_fit_waveform_and_to_int16_contract():
    wave = np.linspace(-2, 2, 9, dtype=np.float32)
    np.testing.assert_array_equal(
        to_int16(wave), [-32768, -32768, -32768, -16384, 0, 16384, 32767, 32767, 32767]
    )
    out = fit_waveform(np.ones(10, np.float32), 8000, 8000, 16)
    assert out.dtype == np.float32 and out.shape == (16,)
    np.testing.assert_array_equal(out, [1] * 10 + [0] * 6)


# ----------------------------------------------------------------------------- video


@pytest.mark.parametrize(("key", "has_audio"), CLIPS.items())
def test_every_clip_decodes_frames_and_its_own_audio_track(files, key, has_audio):
    frames, audio = decode_video(files[key], 8, 64, sample_rate=8000, audio_length=12_000)
    assert frames.shape == (8, 64, 64, 3) and frames.dtype == np.uint8
    if has_audio:
        assert audio.shape == (12_000,) and audio.dtype == np.int16
        expected = int16_of(resample_poly(clip_audio(), 1, CLIP_SAMPLE_RATE // 8000), 12_000)
        assert np.corrcoef(audio.astype(np.float32), expected)[0, 1] > 0.99
    else:
        assert audio is None
    assert decode_video(files[key], 8, 64)[1] is None  # no sample_rate: no audio asked


def expected_frames(frames: int, size: int) -> tuple[list[int], list[np.ndarray]]:
    """The source index on screen at each target time, and every source frame fitted."""
    on_screen = [int((i + 0.5) * CLIP_FRAMES / frames) for i in range(frames)]
    return on_screen, [fit_image(Image.fromarray(f), size) for f in pan_frames()]


@pytest.mark.parametrize("key", ["mp4_silent", "webm_av"])
def test_frame_i_is_the_source_frame_on_screen_at_its_target_time(files, key):
    frames = decode_video(files[key], 8, 64)[0]
    on_screen, sources = expected_frames(8, 64)
    for i, frame in enumerate(frames):
        distances = [mad(frame, source) for source in sources]
        assert int(np.argmin(distances)) == on_screen[i]
        assert distances[on_screen[i]] < 4 < 15 < sorted(distances)[1]


def test_more_frames_than_the_clip_holds_repeat_in_place(files):
    frames = decode_video(files["mp4_silent"], 40, 32)[0]
    on_screen, sources = expected_frames(40, 32)
    nearest = [int(np.argmin([mad(f, s) for s in sources])) for f in frames]
    assert nearest == on_screen and len(set(nearest)) == CLIP_FRAMES


@pytest.mark.parametrize("gap", [0.0, 0.2])  # 0: a seek for every target; 0.2: some
@pytest.mark.parametrize("key", ["mp4_av", "webm_silent", "keyframes"])
def test_seeking_picks_the_same_frames_as_one_pass(files, tmp_path, key, gap, monkeypatch):
    if key == "keyframes":  # seeks land on a keyframe after the start
        files = {key: write_clip(tmp_path / "k.mp4", pan_frames(), CLIP_FPS, keyframe_every=5)}
    in_order = decode_video(files[key], 8, 64)[0]
    monkeypatch.setattr(media, "SEEK_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(media, "SEEK_GAP_SECONDS", gap)
    np.testing.assert_array_equal(decode_video(files[key], 8, 64)[0], in_order)


def test_a_clip_from_bytes_and_a_clip_of_few_frames(files, tmp_path):
    from_path = decode_video(files["webm_av"], 4, 48, sample_rate=8000, audio_length=800)
    from_bytes = decode_video(
        files["webm_av"].read_bytes(), 4, 48, sample_rate=8000, audio_length=800
    )
    for a, b in zip(from_path, from_bytes):
        np.testing.assert_array_equal(a, b)
    three = write_clip(tmp_path / "three.mp4", pan_frames()[:6:2], CLIP_FPS)
    frames = decode_video(three, 6, 32)[0]
    sources = [fit_image(Image.fromarray(f), 32) for f in pan_frames()[:6:2]]
    nearest = [int(np.argmin([mad(f, s) for s in sources])) for f in frames]
    assert nearest == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("suffix", [".mkv", ".mov", ".avi"])
def test_other_containers_pick_the_same_frames(tmp_path, suffix):
    clip = write_clip(tmp_path / f"pan{suffix}", pan_frames(), CLIP_FPS)
    frames = decode_video(clip, 8, 64)[0]
    on_screen, sources = expected_frames(8, 64)
    assert [int(np.argmin([mad(f, s) for s in sources])) for f in frames] == on_screen


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_a_display_rotation_turns_the_frames(tmp_path, degrees):
    clip = write_clip(tmp_path / "turned.mp4", pan_frames(), CLIP_FPS, rotation=degrees)
    frames = decode_video(clip, 4, 48)[0]
    on_screen = [int((i + 0.5) * CLIP_FRAMES / 4) for i in range(4)]
    for frame, k in zip(frames, on_screen):
        upright = pan_frames()[k]
        turned = np.rot90(upright, k=degrees // 90)  # counterclockwise, as the matrix says
        assert mad(frame, fit_image(Image.fromarray(turned), 48)) < 4
        assert mad(frame, fit_image(Image.fromarray(upright), 48)) > 15


# ----------------------------------------------------------------------------- text


def test_text_is_utf8_stripped_with_a_bom_tolerated(files):
    assert read_text(files["txt"]) == "a café cat — naïve 🐱"
    assert read_text(files["txt_bom"]) == "a cat"
    assert read_text("  über  ".encode()) == "über"


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("key", "decode", "reason"),
    [
        ("png_truncated", "image", "truncated"),
        ("jpeg_garbage", "image", "not an image Pillow can read (cannot identify image file)"),
        ("png_bomb", "image", "decompression bomb"),
        ("wav", "image", "not an image"),
        ("wav_empty", "audio", "holds no samples"),
        ("wav_truncated_header", "audio", "No 'data' chunk"),
        ("wav_truncated_data", "audio", "truncated: the header declares 14580 samples"),
        ("flac_truncated", "audio", "truncated"),
        ("wav_nan", "audio", "non-finite"),
        ("mp4_silent", "audio", "no audio stream"),
        ("png", "audio", "no audio stream (FFmpeg reads it as png_pipe)"),
        ("mp4_garbage", "audio", "not an audio file soundfile or FFmpeg can read"),
        ("mp4_garbage", "video", "not a video FFmpeg can decode (Invalid data"),
        ("mp4_truncated", "video", "not a video FFmpeg can decode"),
        ("m4a_audio_only", "video", "no video stream"),
        ("wav", "video", "no video stream"),
        ("txt_latin1", "text", "not UTF-8 text (byte 0xe9 at offset 5"),
    ],
)
def test_broken_files_raise_media_error_with_a_reason(files, key, decode, reason):
    decoders = {
        "image": lambda s: decode_image(s, 32),
        "audio": lambda s: decode_audio(s, 8000, 800),
        "video": lambda s: decode_video(s, 4, 32, sample_rate=8000, audio_length=800),
        "text": read_text,
    }
    for source in (files[key], files[key].read_bytes()):
        with pytest.raises(MediaError) as caught:
            decoders[decode](source)
        assert reason in str(caught.value)
        assert str(files[key]) not in str(caught.value)  # the caller adds the path


@pytest.mark.parametrize("decode", [read_text, lambda s: decode_image(s, 8)])
def test_missing_and_empty_sources_are_refused(tmp_path, decode):
    with pytest.raises(MediaError, match="file does not exist"):
        decode(tmp_path / "missing.png")
    with pytest.raises(MediaError, match="empty"):
        decode(b"")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        decode(tmp_path / "empty.png")


def test_limits_refuse_big_images_and_long_audio_and_video(files):
    with pytest.raises(
        MediaError, match=r"451 x 300 = 135,300 pixels, over the limit.*--max-pixels"
    ):
        decode_image(files["png"], 32, Limits(max_pixels=10_000))
    with pytest.raises(MediaError, match="--max-pixels"):
        decode_video(files["mp4_av"], 4, 32, limits=Limits(max_pixels=1000))
    short = Limits(max_seconds=0.5)
    for key in ("wav", "m4a_audio_only", "mp3"):
        with pytest.raises(MediaError, match=r"lasts .* over the limit.*--max-seconds"):
            decode_audio(files[key], 8000, 800, short)
    for key in ("mp4_av", "webm_silent"):
        with pytest.raises(MediaError, match="--max-seconds"):
            decode_video(files[key], 4, 32, limits=short)
    assert decode_image(files["png"], 32, Limits(max_pixels=300 * 451)).shape == (32, 32, 3)


def test_bad_arguments_are_config_errors(files):
    with pytest.raises(ConfigError, match="size: expected a positive integer"):
        decode_image(files["png"], 0)
    with pytest.raises(ConfigError, match="both sample_rate and audio_length"):
        decode_video(files["mp4_av"], 4, 32, sample_rate=8000)
