"""What a media file is, as WhatsApp wants it described: Opus-in-OGG voice notes and their
duration, JPEG thumbnails and sizes of images, ffmpeg conversions where ffmpeg is installed.

No Go library here (tested in the test process): pure Python, Pillow, and ffmpeg as a
subprocess (imageio-ffmpeg's binary unless one is on PATH). Without ffmpeg nothing fails: a
voice note that is not Opus goes as a plain audio file, a video without duration or thumbnail.
"""

from __future__ import annotations

import io
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass

#: WhatsApp shows a thumbnail of up to about 100 px in the chat before the download.
THUMBNAIL_PX = 96
FFMPEG_TIMEOUT = 60.0


def is_ogg_opus(data: bytes) -> bool:
    """An Ogg stream whose first packet is an Opus header: the only audio phones play as a voice note."""
    return data[:4] == b"OggS" and b"OpusHead" in data[:512]


def ogg_opus_seconds(data: bytes) -> int | None:
    """The duration of an Ogg Opus stream from its last page's granule position (48 kHz samples),
    less the pre-skip of its header; None if the stream does not say."""
    head = data.find(b"OpusHead")
    last = data.rfind(b"OggS")
    if head < 0 or last < 0 or len(data) < last + 14 or len(data) < head + 12:
        return None
    pre_skip = struct.unpack_from("<H", data, head + 10)[0]
    granule = struct.unpack_from("<q", data, last + 6)[0]
    if granule <= 0:
        return None
    return max(round((granule - pre_skip) / 48000), 1)


@dataclass(frozen=True)
class Picture:
    width: int
    height: int
    thumbnail: bytes  # JPEG


def picture(data: bytes) -> Picture | None:
    """Size and a small JPEG thumbnail of an image; None if Pillow cannot read it."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=60)
            return Picture(width, height, out.getvalue())
    except Exception:
        return None


def sticker_webp(data: bytes) -> bytes:
    """A static image as WhatsApp's sticker: WebP, 512 × 512, the image centred on transparency.
    A WebP is sent as it is."""
    from PIL import Image

    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return data
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGBA")
        image.thumbnail((512, 512))
        canvas = Image.new("RGBA", (512, 512), (0, 0, 0, 0))
        canvas.paste(image, ((512 - image.width) // 2, (512 - image.height) // 2))
        out = io.BytesIO()
        canvas.save(out, format="WEBP", quality=80)
        return out.getvalue()


def ffmpeg() -> str | None:
    """ffmpeg on PATH, or the one imageio-ffmpeg ships (a dependency, so voice notes convert
    out of the box); None if neither."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception:
        return None


def _run(args: list[str], data: bytes) -> subprocess.CompletedProcess[bytes] | None:
    """ffmpeg over a temporary file (some containers need seeking); None if it cannot run."""
    exe = ffmpeg()
    if exe is None:
        return None
    with tempfile.NamedTemporaryFile() as source:
        source.write(data)
        source.flush()
        try:
            return subprocess.run([exe, "-hide_banner", "-v", "info", "-i", source.name, *args], capture_output=True,
                                  timeout=FFMPEG_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None


def _output(args: list[str], data: bytes) -> bytes | None:
    result = _run(args, data)
    return result.stdout if result is not None and result.returncode == 0 and result.stdout else None


def to_ogg_opus(data: bytes) -> bytes | None:
    """Any audio as a mono Opus voice note in OGG, if ffmpeg is at hand."""
    return _output(["-vn", "-ac", "1", "-c:a", "libopus", "-b:a", "32k", "-f", "ogg", "-"], data)


def seconds(data: bytes) -> int | None:
    """The duration of any audio or video, as ffmpeg reads it."""
    result = _run([], data)  # no output named: ffmpeg describes the input and stops
    match = re.search(rb"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", result.stderr if result else b"")
    if not match:
        return None
    hours, minutes, secs = match.groups()
    return max(round(int(hours) * 3600 + int(minutes) * 60 + float(secs)), 1)


def video_frame(data: bytes) -> bytes | None:
    """A JPEG of the video's first frame."""
    return _output(["-frames:v", "1", "-f", "image2", "-c:v", "mjpeg", "-"], data)
