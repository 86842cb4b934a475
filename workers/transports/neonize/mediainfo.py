"""What a media file is, as WhatsApp wants it described: Opus-in-OGG voice notes and their
duration, JPEG thumbnails and sizes of images, ffmpeg conversions where ffmpeg is installed.

No Go library here (tested in the test process): pure Python, Pillow, and ffmpeg as a
subprocess (imageio-ffmpeg's binary unless one is on PATH). Without ffmpeg, media in a format
taken still goes: a voice note that is not Opus as a plain audio file, a video without duration
or thumbnail.

The media is the customer's, so it is decoded as hostile (issue 20):
- images: only the formats WhatsApp images come in, and the pixel count read from the header
  and refused over `MAX_IMAGE_PIXELS` before any pixel is decoded (Pillow's decompression-bomb
  limit is set to the same);
- ffmpeg: the input format pinned from the file's magic bytes (never probed: a probe would
  follow an HLS or concat playlist to the URLs and files it names), only the `file` protocol
  (the temporary copy of the media), a deadline, and what it writes read up to a bound;
- whatever cannot be read fails the message for good (`PermanentSendError`) with the reason,
  never an exception out of the worker's thread.
"""

from __future__ import annotations

import io
import os
import re
import selectors
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass

from PIL import Image

from workers.transports.base import PermanentSendError

#: WhatsApp shows a thumbnail of up to about 100 px in the chat before the download.
THUMBNAIL_PX = 96

#: The largest image decoded: 50 megapixels. WhatsApp's apps scale what they send to at most
#: 1600 px a side (a few thousand in HD), so no image WhatsApp shows needs more; 50 MP still
#: takes the largest pictures phones take (48 MP: 8064 × 6048) as they are. It bounds one decode
#: at 200 MB (Pillow keeps 4 bytes a pixel), where a 45-byte PNG header can claim 30000 × 30000
#: (3.6 GB). Set as Pillow's own limit too, process-wide (this module is the worker's own only use
#: of Pillow): Pillow warns above it and raises above twice it, and either is a refusal here.
MAX_IMAGE_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
#: Pillow's plugins for the formats WhatsApp images (and stickers) come in; none other is even
#: tried (Pillow knows dozens, some of which hand the file to other programs, like EPS to
#: Ghostscript).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

#: One ffmpeg run (reading a duration, converting a voice note, taking a video's first frame).
#: Audio converts at some 200 times real time, so even WhatsApp's largest audio (16 MB: 17
#: minutes of MP3 at 128 kb/s) takes about 5 s on one core; a file that holds ffmpeg longer is
#: hostile or far beyond what WhatsApp takes, and would do the same on every retry, holding its
#: instance's queue each time: the message fails for good. Kept under the default
#: MESSAGE_QUEUE_JOB_TIMEOUT (30 s), which bounds the whole build of the message.
FFMPEG_TIMEOUT = 20.0
#: What ffmpeg writes to stdout, read into memory: a voice note at 32 kb/s is 14 MB in an hour;
#: a JPEG frame is far less. Past it ffmpeg is stopped and the message refused.
MAX_FFMPEG_OUTPUT = 32 * 1024 * 1024
#: What ffmpeg says on stderr, kept: the head (the input's description, its duration) and the
#: tail (the error); a hostile file can make it complain without end.
MAX_FFMPEG_LOG = 256 * 1024
#: ffmpeg's own bound on any one allocation (`-max_alloc`): a 4K frame is 12 MB, and a header
#: claiming a gigapixel frame or a billion-entry index fails to allocate instead of swapping.
FFMPEG_MAX_ALLOC = 256 * 1024 * 1024

#: ffmpeg's demuxer for each container taken, and its name in a refusal.
FORMAT_NAMES = {
    "ogg": "OGG",
    "mp3": "MP3",
    "wav": "WAV",
    "aac": "AAC (ADTS)",
    "amr": "AMR",
    "flac": "FLAC",
    "mov": "MP4/M4A/MOV/3GP",
    "matroska": "WebM/Matroska",
}
AUDIO_FORMATS = ("ogg", "mp3", "wav", "aac", "amr", "flac", "mov", "matroska")
VIDEO_FORMATS = ("mov", "matroska")
#: The first box of an ISO-BMFF/QuickTime file: `ftyp`, or in older QuickTime files one of these.
_MOV_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
#: Things customers send that are no media, named in the refusal.
_OTHER_FORMATS = (
    (b"#EXTM3U", "an M3U/HLS playlist"),
    (b"ffconcat", "an ffmpeg concat list"),
    (b"<?xml", "XML"),
    (b"<MPD", "a DASH manifest"),
    (b"v=0", "an SDP session description"),
    (b"%PDF", "a PDF"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "gzip data"),
)
_IMAGES = ("a PNG image", "a JPEG image", "a GIF image", "a WebP image")


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


# Images ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Picture:
    width: int
    height: int
    thumbnail: bytes  # JPEG


def _over_limit(what: str, width: int, height: int) -> PermanentSendError:
    return PermanentSendError(f"{what} is {width} × {height} pixels, over the "
                              f"{MAX_IMAGE_PIXELS // 1_000_000}-megapixel limit")


def _open_image(data: bytes, what: str) -> Image.Image:
    """The image, opened but not decoded (Pillow reads only the header), in a format taken and
    within the pixel limit; PermanentSendError with the reason otherwise."""
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Over twice the limit (or over it, where warnings are errors): Pillow refused at the header.
        claimed = _claimed_size(data)
        if claimed:
            raise _over_limit(what, *claimed) from None
        raise PermanentSendError(f"{what} is over the {MAX_IMAGE_PIXELS // 1_000_000}-megapixel limit: "
                                 f"{error}") from None
    except Exception as error:
        unidentified = isinstance(error, Image.UnidentifiedImageError)
        if describe(data) in _IMAGES:  # the magic number of one, but not the rest
            raise _broken(what, data, None if unidentified else error) from None
        formats = ", ".join("WebP" if f == "WEBP" else f for f in IMAGE_FORMATS)
        detail = "" if unidentified else f" ({type(error).__name__}: {error})"
        raise PermanentSendError(f"{what} is not an image in a format taken ({formats}): "
                                 f"{describe(data)}{detail}") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:  # between the limit and twice it, Pillow only warned
        image.close()
        raise _over_limit(what, width, height)
    return image


def _claimed_size(data: bytes) -> tuple[int, int] | None:
    """The size an image's header states, read by its format's Pillow plugin alone (Image.open
    would refuse it as a bomb before saying it); nothing is decoded."""
    for name in IMAGE_FORMATS:
        factory, accept = Image.OPEN.get(name, (None, None))
        if factory is None or (accept is not None and not accept(data[:16])):
            continue
        try:
            with factory(io.BytesIO(data), "") as image:
                return image.size
        except Exception:
            continue
    return None


def _broken(what: str, data: bytes, error: Exception | None) -> PermanentSendError:
    detail = f" ({type(error).__name__}: {error})" if error is not None else ""
    return PermanentSendError(f"{what} cannot be read: {describe(data)}, truncated or corrupt{detail}")


def picture(data: bytes, what: str = "image") -> Picture:
    """Size and a small JPEG thumbnail of an image; PermanentSendError (naming `what`) if it is
    not an image in a format taken, is over the pixel limit, or cannot be decoded."""
    with _open_image(data, what) as image:
        width, height = image.size
        try:
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))  # a JPEG is decoded at 1/8 scale where it can
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=60)
        except Exception as error:
            raise _broken(what, data, error) from None
        return Picture(width, height, out.getvalue())


def preview(data: bytes) -> Picture | None:
    """`picture` of a file that need not be an image (a document): None where it is not one, or
    one too large or broken to show."""
    try:
        return picture(data)
    except PermanentSendError:
        return None


def sticker_webp(data: bytes) -> bytes:
    """A static image as WhatsApp's sticker: WebP, 512 × 512, the image centred on transparency.
    A WebP is sent as it is, once it decodes within the pixel limit."""
    with _open_image(data, "sticker") as image:
        try:
            if image.format == "WEBP":
                image.load()
                return data
            image.draft("RGB", (512, 512))  # a JPEG is decoded at a fraction of its size where it can
            rgba = image.convert("RGBA")
            rgba.thumbnail((512, 512))
            canvas = Image.new("RGBA", (512, 512), (0, 0, 0, 0))
            canvas.paste(rgba, ((512 - rgba.width) // 2, (512 - rgba.height) // 2))
            out = io.BytesIO()
            canvas.save(out, format="WEBP", quality=80)
            return out.getvalue()
        except Exception as error:
            raise _broken("sticker", data, error) from None


# Audio and video through ffmpeg ---------------------------------------------------------------

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


def _mpeg_audio_frame(head: bytes) -> bool:
    """An MPEG-1/2 audio (MP3) frame header: 11 sync bits, a version, a layer and a bitrate
    and sample rate that are not the reserved values."""
    return (len(head) >= 3 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and (head[1] >> 3) & 3 != 1
            and (head[1] >> 1) & 3 != 0 and head[2] >> 4 != 0xF and (head[2] >> 2) & 3 != 3)


def _adts_frame(head: bytes) -> bool:
    """An AAC ADTS frame header: 12 sync bits and layer 0."""
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0


def sniff(data: bytes) -> str | None:
    """ffmpeg's demuxer for the container the bytes are, from their magic numbers; None if none
    of `FORMAT_NAMES`."""
    if data[:4] == b"OggS":
        return "ogg"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if data[4:8] in _MOV_BOXES:
        return "mov"
    if data[:6] == b"#!AMR\n" or data[:9] == b"#!AMR-WB\n":
        return "amr"
    if data[:4] == b"fLaC":
        return "flac"
    body = data
    if data[:3] == b"ID3" and len(data) >= 10:  # an ID3v2 tag first: what follows it decides
        size = 10 + sum((b & 0x7F) << (7 * (3 - n)) for n, b in enumerate(data[6:10]))
        body = data[size + (10 if data[5] & 0x10 else 0):]  # its footer, if the flags say so
    if _adts_frame(body):
        return "aac"
    if _mpeg_audio_frame(body) or data[:3] == b"ID3":
        return "mp3"
    return None


def describe(data: bytes) -> str:
    """What bytes that are no media taken seem to be, for a refusal."""
    if not data:
        return "empty"
    for magic, name in _OTHER_FORMATS:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "a WebP image"
    if data[:4] == b"RIFF":
        return f"a RIFF {data[8:12].decode('latin-1')!r} file"
    head = data[:40]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        return f"text ({text[:32]!r}{'…' if len(data) > 32 else ''})"
    return f"unknown bytes ({data[:12].hex(' ')})"


def input_format(data: bytes, kind: str) -> str:
    """The demuxer ffmpeg must read `data` (an `audio` or a `video`) with; PermanentSendError
    naming what it is instead."""
    taken = VIDEO_FORMATS if kind == "video" else AUDIO_FORMATS
    found = sniff(data)
    if found in taken:
        return found
    names = ", ".join(FORMAT_NAMES[f] for f in taken)
    seen = f"{FORMAT_NAMES[found]}" if found else describe(data)
    raise PermanentSendError(f"{kind} is {seen}, not a format taken for {kind} ({names})")


@dataclass(frozen=True)
class _Ran:
    returncode: int
    stdout: bytes
    stderr: bytes


def _run(args: list[str], data: bytes, kind: str, *, verbosity: str = "error") -> _Ran | None:
    """ffmpeg on `data` (over a temporary file: some containers need seeking) with output
    `args`, its input format pinned; None if there is no ffmpeg. PermanentSendError for a
    format not taken, a run past FFMPEG_TIMEOUT, or output past MAX_FFMPEG_OUTPUT."""
    fmt = input_format(data, kind)
    exe = ffmpeg()
    if exe is None:
        return None
    with tempfile.NamedTemporaryFile(prefix="wmq-media-") as source:
        source.write(data)
        source.flush()
        # Input options before -i: the demuxer named, never probed for; only file: for it and
        # whatever it opens (the output pipe is the muxer's, not subject to this list); a
        # QuickTime file's references to other files left off (ffmpeg's default, said anyway).
        command = [exe, "-hide_banner", "-nostdin", "-v", verbosity, "-max_alloc", str(FFMPEG_MAX_ALLOC),
                   "-protocol_whitelist", "file", "-f", fmt, *(["-enable_drefs", "0"] if fmt == "mov" else []),
                   "-i", f"file:{source.name}", *args]
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
        except OSError:
            return None
        try:
            stdout, stderr = _collect(process, kind)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdout.close()  # type: ignore[union-attr]
            process.stderr.close()  # type: ignore[union-attr]
        return _Ran(process.returncode, stdout, stderr.replace(source.name.encode(), b"<media>"))


def _collect(process: subprocess.Popen[bytes], kind: str) -> tuple[bytes, bytes]:
    """ffmpeg's stdout (at most MAX_FFMPEG_OUTPUT) and stderr (its head and tail) once it has
    closed both, within FFMPEG_TIMEOUT of now; PermanentSendError past either bound (the caller
    kills the process)."""
    deadline = time.monotonic() + FFMPEG_TIMEOUT
    out, head, tail = bytearray(), bytearray(), bytearray()
    assert process.stdout is not None and process.stderr is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        selector.register(process.stderr, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise _too_slow(kind)
            for key, _ in selector.select(left):
                block = os.read(key.fd, 65536)
                if not block:
                    selector.unregister(key.fileobj)
                elif key.fileobj is process.stdout:
                    out += block
                    if len(out) > MAX_FFMPEG_OUTPUT:
                        raise PermanentSendError(f"ffmpeg's output from the {kind} is over "
                                                 f"{MAX_FFMPEG_OUTPUT:,} bytes: stopped")
                elif len(head) < MAX_FFMPEG_LOG:
                    head += block
                else:
                    tail = (tail + block)[-8192:]
    try:
        process.wait(max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        raise _too_slow(kind) from None
    return bytes(out), bytes(head + (b"\n...\n" + tail if tail else b""))


def _too_slow(kind: str) -> PermanentSendError:
    return PermanentSendError(f"ffmpeg took over {FFMPEG_TIMEOUT:g}s on the {kind}: stopped (a file it takes "
                              "this long on is hostile or far longer than WhatsApp takes)")


def _complaint(stderr: bytes) -> str:
    """Why ffmpeg failed: its first complaint (the cause) and its last (what it gave up on),
    without the addresses of its components."""
    text = stderr.decode("utf-8", "replace")
    lines = [re.sub(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*", "", line.strip()) for line in text.splitlines()]
    lines = [line for line in lines if line and line != "..."]
    if not lines:
        return "no reason given"
    said = lines[0] if lines[0] == lines[-1] else f"{lines[0]} … {lines[-1]}"
    return said[:400]


def _output(args: list[str], data: bytes, kind: str, doing: str) -> bytes | None:
    """What ffmpeg writes to stdout; None if there is no ffmpeg; PermanentSendError if it fails."""
    result = _run(args, data, kind)
    if result is None:
        return None
    if result.returncode != 0 or not result.stdout:
        name = FORMAT_NAMES[input_format(data, kind)]
        raise PermanentSendError(f"{kind} ({name}) could not be {doing}: {_complaint(result.stderr)}")
    return result.stdout


def to_ogg_opus(data: bytes) -> bytes | None:
    """Any audio as a mono Opus voice note in OGG; None if there is no ffmpeg."""
    return _output(["-vn", "-ac", "1", "-c:a", "libopus", "-b:a", "32k", "-f", "ogg", "pipe:1"], data, "audio",
                   "converted to a voice note")


def seconds(data: bytes, kind: str = "audio") -> int | None:
    """The duration of an audio or a video (`kind`), as ffmpeg reads it; None if there is no
    ffmpeg or the file does not say. PermanentSendError if ffmpeg cannot open it."""
    result = _run([], data, kind, verbosity="info")  # no output named: ffmpeg describes the input and stops
    if result is None:
        return None
    # Anchored at the line's start: the file's own metadata (a title…) is printed indented, after a name.
    if not re.search(rb"^Input #0,", result.stderr, re.MULTILINE):
        raise PermanentSendError(f"{kind} ({FORMAT_NAMES[input_format(data, kind)]}) could not be read: "
                                 f"{_complaint(result.stderr)}")
    stream = rb"^\s*Stream #\d+:\d+\S*: " + (b"Video" if kind == "video" else b"Audio") + b":"
    if not re.search(stream, result.stderr, re.MULTILINE):
        raise PermanentSendError(f"{kind} ({FORMAT_NAMES[input_format(data, kind)]}) has no {kind} stream")
    match = re.search(rb"^\s*Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", result.stderr, re.MULTILINE)
    if not match:
        return None
    hours, minutes, secs = match.groups()
    return max(round(int(hours) * 3600 + int(minutes) * 60 + float(secs)), 1)


def video_frame(data: bytes) -> bytes | None:
    """A JPEG of the video's first frame; None if there is no ffmpeg."""
    return _output(["-an", "-frames:v", "1", "-f", "image2", "-c:v", "mjpeg", "pipe:1"], data, "video",
                   "read for its first frame")
