"""Customer media decoded as hostile (issue 20): image bombs refused at the header, broken files
refused with the reason, ffmpeg given a pinned input format and only the file protocol, so a
playlist never makes it open a URL, and every ffmpeg run bounded in time and output.

Needs no database: mediainfo is pure Python, Pillow and the ffmpeg binary imageio-ffmpeg ships.
The one check through the message builders runs in a subprocess (they load neonize's Go library,
which must stay out of pytest's process: tests/test_whatsapp_edge.py)."""

from __future__ import annotations

import io
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.stack import ROOT
from workers.transports.base import PermanentSendError
from workers.transports.neonize import mediainfo


def png(width: int, height: int, *, pixels: bool = False) -> bytes:
    """A PNG claiming `width` × `height` RGB pixels: only its header, or with every pixel (black,
    which zlib packs a thousand to one: a real decompression bomb of a few hundred kB)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    idat = b""
    if pixels:
        packer, rows = zlib.compressobj(9), bytes((1 + 3 * width) * 100)
        idat = chunk(b"IDAT", b"".join([packer.compress(rows) for _ in range(height // 100)] + [packer.flush()]))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + idat + chunk(b"IEND", b""))


def jpeg(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    Image.effect_noise((width, height), 64).convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def lavfi(*args: str, seekable: bool = False) -> bytes:
    """A media sample made by ffmpeg's own generators (the binary the product uses); written to
    a file where the muxer seeks back (an MP4 with its index at the end)."""
    exe = mediainfo.ffmpeg()
    assert exe, "ffmpeg (imageio-ffmpeg) is a dependency"
    if not seekable:
        return subprocess.run([exe, "-v", "error", "-f", "lavfi", *args, "-"], capture_output=True, check=True,
                              timeout=60).stdout
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "sample")
        subprocess.run([exe, "-v", "error", "-f", "lavfi", *args, path], capture_output=True, check=True, timeout=60)
        with open(path, "rb") as sample:
            return sample.read()


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


@pytest.mark.parametrize(("width", "height", "pixels"), [
    (30000, 30000, False),  # a 45-byte header: over twice the limit, where Pillow itself raises
    (8000, 8000, True),  # 64 MP of real pixels in 190 kB: under Pillow's default limit (89 MP), over ours
])
@pytest.mark.parametrize("bomb_warnings", ["ignore", "error"])  # Pillow warns between the limit and twice it
def test_an_image_over_the_pixel_limit_is_refused_before_its_pixels_are_decoded(
        width: int, height: int, pixels: bool, bomb_warnings: Any) -> None:
    bomb = png(width, height, pixels=pixels)
    assert len(bomb) < 300_000
    before = max_rss_mb()
    with warnings.catch_warnings():
        warnings.simplefilter(bomb_warnings, Image.DecompressionBombWarning)
        for refuse, what in ((mediainfo.picture, "image"), (mediainfo.sticker_webp, "sticker")):
            with pytest.raises(PermanentSendError) as refused:
                refuse(bomb)
            assert str(refused.value) == f"{what} is {width} × {height} pixels, over the 50-megapixel limit"
        assert mediainfo.preview(bomb) is None  # sent as a document: the file goes, without a preview
    # Decoding the 8000 × 8000 one would take 256 MB (Pillow keeps RGB in 4 bytes a pixel).
    assert max_rss_mb() - before < 50, f"memory went from {before:.0f} MB to {max_rss_mb():.0f} MB"
    # The limit is Pillow's own too, for any other use of it in the worker.
    assert Image.MAX_IMAGE_PIXELS == mediainfo.MAX_IMAGE_PIXELS == 50_000_000


def test_an_image_within_the_limit_still_has_its_size_and_thumbnail() -> None:
    seen = mediainfo.picture(jpeg(640, 480))
    assert (seen.width, seen.height) == (640, 480) and seen.thumbnail.startswith(b"\xff\xd8")
    with Image.open(io.BytesIO(seen.thumbnail)) as thumbnail:
        assert max(thumbnail.size) <= mediainfo.THUMBNAIL_PX
    sticker = mediainfo.sticker_webp(png(300, 100, pixels=True))
    assert sticker[:4] == b"RIFF" and sticker[8:12] == b"WEBP"


def test_a_truncated_or_false_image_is_refused_with_the_reason() -> None:
    whole = jpeg()
    for refuse, what in ((mediainfo.picture, "image"), (mediainfo.sticker_webp, "sticker")):
        with pytest.raises(PermanentSendError, match=f"^{what} cannot be read: a JPEG image, truncated or corrupt"):
            refuse(whole[: len(whole) // 2])
        with pytest.raises(PermanentSendError, match=f"^{what} is not an image in a format taken .*: text"):
            refuse(b"not an image, just words")
        with pytest.raises(PermanentSendError, match=f"^{what} is not an image .*: an M3U/HLS playlist"):
            refuse(b"#EXTM3U\n#EXTINF:1,\nhttp://127.0.0.1/x.ts\n")
    assert mediainfo.preview(whole[: len(whole) // 2]) is None
    assert mediainfo.preview(b"%PDF-1.4 a document") is None


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP port on 127.0.0.1 and what any connection to it sent."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    connections: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    connections.append(conn.recv(4096) or b"(connected)")
                except OSError:
                    connections.append(b"(connected)")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], connections
    stop.set()
    thread.join(2)
    server.close()


def test_a_playlist_given_as_audio_or_video_is_refused_and_never_followed(
        listener: tuple[int, list[bytes]], tmp_path: Path) -> None:
    port, connections = listener
    url = f"http://127.0.0.1:{port}/x"
    playlist = (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
                f"#EXTINF:10.0,\n{url}.ts\n#EXT-X-ENDLIST\n").encode()
    hostile = {
        "an M3U/HLS playlist": playlist,
        "an ffmpeg concat list": f"ffconcat version 1.0\nfile '{url}.mp3'\nfile '/etc/passwd'\n".encode(),
    }
    for name, data in hostile.items():
        for call, kind in ((mediainfo.to_ogg_opus, "audio"), (lambda d: mediainfo.seconds(d, "audio"), "audio"),
                           (lambda d: mediainfo.seconds(d, "video"), "video"), (mediainfo.video_frame, "video")):
            with pytest.raises(PermanentSendError, match=f"^{kind} is {name}, not a format taken for {kind}"):
                call(data)
    time.sleep(0.5)  # anything ffmpeg started would have connected by now
    assert connections == []
    # The listener does see ffmpeg follow the playlist, where ffmpeg is let probe it and use http.
    (tmp_path / "list.m3u8").write_bytes(playlist)
    exe = mediainfo.ffmpeg()
    assert exe
    subprocess.run([exe, "-v", "quiet", "-protocol_whitelist", "file,http,tcp", "-i", str(tmp_path / "list.m3u8"),
                    "-f", "null", "-"], capture_output=True, timeout=30, check=False)
    deadline = time.monotonic() + 5
    while not connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert connections and connections[0].startswith(b"GET /x.ts ")


def test_a_file_of_no_format_taken_is_refused_naming_what_it_is() -> None:
    for call in (mediainfo.to_ogg_opus, lambda d: mediainfo.seconds(d, "audio")):
        with pytest.raises(PermanentSendError, match=r"^audio is text \('Hello! This is a text file.*'…\), not a "
                           r"format taken for audio \(OGG, MP3, WAV, AAC \(ADTS\), AMR, FLAC, MP4"):
            call(b"Hello! This is a text file, not a song.\n")
    with pytest.raises(PermanentSendError, match=r"^audio is unknown bytes \(00 01 02 03"):
        mediainfo.to_ogg_opus(bytes(range(64)))
    with pytest.raises(PermanentSendError, match=r"^audio is empty"):
        mediainfo.seconds(b"", "audio")
    wav = lavfi("-i", "sine=duration=1", "-f", "wav")
    with pytest.raises(PermanentSendError, match=r"^video is WAV, not a format taken for video \(MP4/M4A/MOV/3GP"):
        mediainfo.video_frame(wav)


@pytest.mark.parametrize(("muxer", "demuxer"), [
    (["-f", "wav"], "wav"),
    (["-f", "mp3"], "mp3"),  # with an ID3 tag first
    (["-write_xing", "0", "-id3v2_version", "0", "-f", "mp3"], "mp3"),  # a bare frame sync
    (["-c:a", "aac", "-f", "adts"], "aac"),
    (["-ar", "8000", "-ac", "1", "-c:a", "libopencore_amrnb", "-f", "amr"], "amr"),
    (["-f", "flac"], "flac"),
    (["-c:a", "libvorbis", "-f", "ogg"], "ogg"),
    (["-c:a", "aac", "-movflags", "frag_keyframe+empty_moov", "-f", "ipod"], "mov"),  # .m4a
    (["-c:a", "libopus", "-f", "webm"], "matroska"),
])
def test_good_audio_of_every_format_taken_still_converts(muxer: list[str], demuxer: str) -> None:
    audio = lavfi("-i", "sine=duration=2", *muxer)
    assert mediainfo.sniff(audio) == demuxer
    assert mediainfo.seconds(audio, "audio") in (None, 2)  # a streamed FLAC or WebM need not say
    voice = mediainfo.to_ogg_opus(audio)
    assert voice is not None and mediainfo.is_ogg_opus(voice) and mediainfo.ogg_opus_seconds(voice) == 2


def test_a_good_video_still_has_its_duration_and_first_frame() -> None:
    mp4 = lavfi("-i", "testsrc=duration=2:size=160x120:rate=10", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                "-movflags", "frag_keyframe+empty_moov", "-f", "mp4")
    assert mediainfo.seconds(mp4, "video") == 2
    frame = mediainfo.video_frame(mp4)
    assert frame is not None
    seen = mediainfo.picture(frame, "video frame")
    assert (seen.width, seen.height) == (160, 120)


def test_truncated_or_mislabelled_audio_and_video_are_refused_with_ffmpegs_reason() -> None:
    mp3 = lavfi("-i", "sine=duration=2", "-f", "mp3")
    with pytest.raises(PermanentSendError, match=r"^audio \(MP3\) could not be read: .*MPEG audio frames"):
        mediainfo.seconds(mp3[:60], "audio")
    with pytest.raises(PermanentSendError, match=r"^audio \(MP3\) could not be converted to a voice note: "):
        mediainfo.to_ogg_opus(mp3[:60])
    mp4 = lavfi("-i", "testsrc=duration=1:size=64x48:rate=10", "-c:v", "libx264", "-f", "mp4",
                seekable=True)  # its index (moov) at the end
    for call in (lambda d: mediainfo.seconds(d, "video"), mediainfo.video_frame):
        with pytest.raises(PermanentSendError, match=r"^video \(MP4/M4A/MOV/3GP\) could not be read.*moov atom"):
            call(mp4[: len(mp4) // 2])
    # Wrong bytes behind a right magic number: OGG's, then text.
    with pytest.raises(PermanentSendError, match=r"^audio \(OGG\) could not be"):
        mediainfo.to_ogg_opus(b"OggS" + b"garbage " * 100)
    # A real video sent as audio: no sound to send.
    with pytest.raises(PermanentSendError, match=r"^audio \(MP4/M4A/MOV/3GP\) has no audio stream"):
        mediainfo.seconds(mp4, "audio")


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[bytes]]:
    """Every process started from now (subprocess.Popen is patched where mediainfo finds it,
    which is everywhere), for a look at ffmpeg's command line and its end."""
    started: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        process = real(*args, **kwargs)
        started.append(process)
        return process

    monkeypatch.setattr(mediainfo.subprocess, "Popen", popen)
    return started


def test_ffmpeg_reads_only_the_pinned_format_from_the_file_protocol(runs: list[subprocess.Popen[bytes]]) -> None:
    wav = lavfi("-i", "sine=duration=1", "-f", "wav")
    runs.clear()  # lavfi's own ffmpeg
    assert mediainfo.to_ogg_opus(wav) and mediainfo.seconds(wav, "audio") == 1
    assert len(runs) == 2
    for process in runs:
        command = list(process.args)  # type: ignore[arg-type]
        source = command.index("-i")
        options = command[:source]
        assert options[options.index("-f") + 1] == "wav"
        assert options[options.index("-protocol_whitelist") + 1] == "file"
        assert command[source + 1].startswith("file:")
        assert process.returncode is not None


def test_an_ffmpeg_run_past_its_deadline_is_killed_and_the_message_refused(
        runs: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    wav = lavfi("-i", "sine=duration=30", "-f", "wav")
    runs.clear()
    monkeypatch.setattr(mediainfo, "FFMPEG_TIMEOUT", 0.001)
    started = time.monotonic()
    with pytest.raises(PermanentSendError, match=r"^ffmpeg took over 0.001s on the audio: stopped"):
        mediainfo.to_ogg_opus(wav)
    assert time.monotonic() - started < 5
    (process,) = runs
    assert process.returncode == -9  # killed, and waited for: no zombie left


def test_ffmpeg_output_is_read_only_up_to_its_bound(runs: list[subprocess.Popen[bytes]],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    wav = lavfi("-i", "sine=duration=20", "-f", "wav")  # some 80 kB as a voice note
    runs.clear()
    monkeypatch.setattr(mediainfo, "MAX_FFMPEG_OUTPUT", 16_000)
    with pytest.raises(PermanentSendError, match=r"^ffmpeg's output from the audio is over 16,000 bytes: stopped"):
        mediainfo.to_ogg_opus(wav)
    (process,) = runs
    assert process.returncode is not None


BUILDERS_CHECK = r"""
import base64, io
from PIL import Image
from tests.fast.test_media_decoders import jpeg, png
from tests.whatsapp_checks import FakeUpload, data_uri
from workers.transports.base import PermanentSendError
from workers.transports.neonize.messages import build_message

upload = FakeUpload()
bomb, broken = png(30000, 30000), jpeg()[:300]
playlist = b"#EXTM3U\n#EXTINF:10,\nhttp://127.0.0.1:9/x.ts\n"
for kind, payload, reason in (
    ("image", {"image": data_uri("image/png", bomb)}, "image is 30000 × 30000 pixels, over the 50-megapixel limit"),
    ("image", {"image": data_uri("image/jpeg", broken)}, "image cannot be read: a JPEG image, truncated"),
    ("sticker", {"sticker": data_uri("image/png", bomb)}, "sticker is 30000 × 30000 pixels"),
    ("link", {"message": "m", "linkUrl": "https://example.com", "image": data_uri("image/png", bomb)},
     "link preview image is 30000 × 30000 pixels"),
    ("audio", {"audio": data_uri("audio/mpeg", b"just text")}, "audio is text ('just text'), not a format taken"),
    ("audio", {"audio": data_uri("audio/mpeg", playlist), "ptt": False}, "audio is an M3U/HLS playlist"),
    ("video", {"video": data_uri("video/mp4", playlist)}, "video is an M3U/HLS playlist"),
):
    try:
        build_message(kind, payload, upload)
    except PermanentSendError as error:
        assert reason in str(error), (kind, str(error))
    else:
        raise AssertionError(f"{kind} should be refused")
assert upload.calls == []  # nothing refused was uploaded
# A document is any file: an image bomb goes as one, only without a preview.
document = build_message("document", {"document": base64.b64encode(bomb).decode(), "extension": "png"},
                         upload).documentMessage
assert not document.JPEGThumbnail and upload.calls[-1][0] == bomb
print("builders refuse hostile media")
"""


def test_the_message_builders_refuse_hostile_media_for_good() -> None:
    """Through build_message (in a subprocess: it loads neonize's Go library)."""
    result = subprocess.run([sys.executable, "-c", BUILDERS_CHECK], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-4000:]}"
    assert "builders refuse hostile media" in result.stdout
