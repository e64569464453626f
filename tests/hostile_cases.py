"""Hostile inputs for the service: the files (made once, small) and the generated case list.

Each case is one HTTP request and the answer the service must give: status and error `code` (a set of
codes where the outcome legitimately depends on how much of a damaged file decodes). Used by
tests/test_serving_hostile.py against a real `bentoml serve`, and by the serving benchmark (bombs).
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from serving_helpers import encode_video, plain_frames, synthetic_face_frames, unsupported_codec_avi, write_mp4v

# The limits the hostile server runs with (small, so every limit is reached with small files).
LIMITS = {"S4D_MAX_UPLOAD_MB": "3", "S4D_MAX_SECONDS": "12", "S4D_MAX_PIXELS": "2000000",
          "S4D_MAX_JSON_MB": "4", "S4D_MAX_CLIPS": "8"}
CLIP_SHAPE = (8, 64, 64, 3)  # the tiny profile's (T, H, W, 3)


@dataclass
class Case:
    id: str
    route: str
    request: Callable[[dict], dict]  # files -> requests.request kwargs
    status: int | set
    code: str | set | None  # None: a 200 answer
    method: str = "POST"
    words: str = ""  # the error message must contain this
    tags: set = field(default_factory=set)


# -------------------------------------------------------------------------------------------- files
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int, rows: int | None = None) -> bytes:
    """A valid PNG of `width` x `height` black pixels (zlib shrinks it ~1000x); `rows` < height gives a
    header that claims more rows than the data holds."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    data = b"".join(packer.compress(row) for _ in range(height if rows is None else rows)) + packer.flush()
    head = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", head) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def jpeg_claiming(data: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) is patched to claim `width` x `height`."""
    at = data.index(b"\xff\xc0")
    return data[:at + 5] + struct.pack(">HH", height, width) + data[at + 9:]


def bmp_claiming(width: int, height: int) -> bytes:
    header = struct.pack("<2sIHHI", b"BM", 54 + 16, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 16, 2835, 2835, 0, 0)
    return header + info + bytes(16)


def webp_claiming(width: int, height: int) -> bytes:
    """A VP8X WebP header claiming a canvas of width x height, no image data."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + \
        (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def gif_claiming(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b"\x3b"


def playlist(target: Path) -> bytes:
    return (f"#EXTM3U\n#EXT-X-TARGETDURATION:16\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:15.5,\n{target}\n"
            "#EXT-X-ENDLIST\n").encode()


def make_files(folder: Path, canary: Path) -> dict[str, bytes]:
    """Every upload of the matrix, as bytes. `canary` is a valid face video on the server's disk that the
    playlists and concat lists point to."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    faces = synthetic_face_frames(2.0, fps=25.0, size=256)
    encode_video(canary, faces, fps=25.0)
    full = encode_video(folder / "full.mp4", plain_frames(4.0, fps=25.0), fps=25.0, faststart=True).read_bytes()
    tail = write_mp4v(folder / "tail.mp4", plain_frames(3.0)).read_bytes()
    faceless = write_mp4v(folder / "faceless.mp4", plain_frames(2.0)).read_bytes()
    still = cv2.imencode(".jpg", np.full((120, 160, 3), 128, np.uint8))[1].tobytes()
    big = np.full((1200, 1800, 3), 90, np.uint8)  # 2.16 MP: above the 2 MP frame limit
    files = {
        "canary.mp4": canary.read_bytes(),
        "full.mp4": full, "tail.mp4": tail, "faceless.mp4": faceless,
        "faceless.mkv": encode_video(folder / "faceless.mkv", plain_frames(2.0), fps=10.0).read_bytes(),
        "faceless.webm": encode_video(folder / "faceless.webm", plain_frames(2.0), fps=10.0,
                                      codec="libvpx").read_bytes(),
        "faceless.avi": encode_video(folder / "faceless.avi", plain_frames(2.0), fps=10.0, codec="mpeg4").read_bytes(),
        "fast1000.mp4": encode_video(folder / "fast1000.mp4", plain_frames(1.5, fps=1000.0, size=(64, 48)),
                                     fps=1000.0).read_bytes(),
        "long.mp4": write_mp4v(folder / "long.mp4", plain_frames(15.0, fps=5.0), fps=5.0).read_bytes(),
        "odd.avi": unsupported_codec_avi(folder / "odd.avi").read_bytes(),
        "big_frames.mp4": encode_video(folder / "big.mp4", big[None].repeat(2, 0), fps=10.0).read_bytes(),
        "big_frames.mkv": encode_video(folder / "big.mkv", big[None].repeat(2, 0), fps=10.0).read_bytes(),
        "still.jpg": still,
        "still.png": cv2.imencode(".png", np.full((120, 160, 3), 128, np.uint8))[1].tobytes(),
        "still.bmp": cv2.imencode(".bmp", np.full((40, 40, 3), 128, np.uint8))[1].tobytes(),
        "still.webp": cv2.imencode(".webp", np.full((40, 40, 3), 128, np.uint8))[1].tobytes(),
        "still.tiff": cv2.imencode(".tiff", np.full((40, 40, 3), 128, np.uint8))[1].tobytes(),
        "tiny.png": cv2.imencode(".png", np.full((8, 8, 3), 128, np.uint8))[1].tobytes(),
        "bomb.png": png_bomb(6000, 6000),  # 36 MP of zeros in ~100 KB
        "bomb_header.png": png_bomb(20000, 20000, rows=2),  # claims 400 MP
        "lie.jpg": jpeg_claiming(still, 16000, 16000),
        "lie.bmp": bmp_claiming(30000, 30000),
        "lie.webp": webp_claiming(16000, 16000),
        "lie.gif": gif_claiming(65535, 65535),
    }
    return files


# -------------------------------------------------------------------------------------------- cases
def _upload(field: str, name: str, data_key: str | None = None, content=None, mime="application/octet-stream"):
    def build(files):
        data = files[data_key] if data_key is not None else content
        return {"files": {field: (name, data, mime)}}
    return build


def _json(payload) -> Callable[[dict], dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return lambda files: {"data": body, "headers": {"Content-Type": "application/json"}}


def _raw(body: bytes, content_type: str | None, extra: dict | None = None) -> Callable[[dict], dict]:
    headers = {"Content-Type": content_type} if content_type else {}
    headers.update(extra or {})
    return lambda files: {"data": body, "headers": headers}


def _compact(shape, data: str | None = None, dtype="uint8") -> dict:
    import base64

    if data is None:
        data = base64.b64encode(bytes(int(np.prod(shape)))).decode()
    return {"clips": {"shape": list(shape), "dtype": dtype, "data": data}}


def cases(canary: Path) -> list[Case]:
    out: list[Case] = []
    add = out.append
    V, I, C = "/predict_video", "/predict_image", "/classify_clips"

    # 1. playlists, concat lists, text: never handed to FFmpeg, so the canary is never opened
    targets = {"abs": str(canary), "file_url": f"file://{canary}", "rel": canary.name, "http": "http://127.0.0.1:9/x.ts"}
    for where, target in targets.items():
        text = playlist(target)
        for name in ("x.m3u8", "x.mp4", "x.txt", "upload"):
            add(Case(f"video-hls-{where}-{name}", V, _upload("video", name, content=text), 415, "not_media",
                     words="not a recognised video", tags={"canary"}))
        add(Case(f"image-hls-{where}", I, _upload("image", "x.m3u8", content=text), 415, "not_image"))
    for name in ("list.ffconcat", "list.mp4", "list.txt"):
        add(Case(f"video-concat-{name}", V, _upload("video", name, content=f"ffconcat version 1.0\nfile '{canary}'\n"
                                                  .encode()), 415, "not_media", tags={"canary"}))
    for name, text in {"notes.txt": b"hello\n" * 50, "subs.srt": b"1\n00:00:01,000 --> 00:00:02,000\nhi\n",
                       "page.html": b"<html><body>x</body></html>", "data.json": b'{"a": 1}',
                       "script.sh": b"#!/bin/sh\nrm -rf /\n", "notes.mp4": b"just some text\n" * 100}.items():
        add(Case(f"video-text-{name}", V, _upload("video", name, content=text), 415, "not_media"))
        add(Case(f"image-text-{name}", I, _upload("image", name, content=text), 415, "not_image"))

    # 2. other containers and signatures: only MP4/MOV, Matroska/WebM and AVI are decoded
    for fmt, head in {"mpegts": (b"\x47" + bytes(187)) * 4, "flv": b"FLV\x01\x05" + bytes(100),
                      "mpeg_ps": b"\x00\x00\x01\xba" + bytes(100), "asf": b"\x30\x26\xb2\x75\x8e\x66\xcf\x11" + bytes(100),
                      "gif": b"GIF89a" + bytes(100)}.items():
        add(Case(f"video-container-{fmt}", V, _upload("video", f"x.{fmt}", content=head), 415, "not_media",
                 words="not accepted"))
    for n, size in enumerate((1, 7, 512, 10_000, 100_000, 1_000_000)):
        noise = np.random.default_rng(n).bytes(size)
        add(Case(f"video-noise-{size}", V, _upload("video", "noise.mp4", content=noise), 415, "not_media"))
        add(Case(f"image-noise-{size}", I, _upload("image", "noise.jpg", content=noise), 415, "not_image"))
    for magic_name, magic in {"ftyp": b"\x00\x00\x00\x18ftypisom", "ebml": b"\x1a\x45\xdf\xa3",
                              "riff_avi": b"RIFF\x00\x00\x00\x00AVI LIST"}.items():
        for tail_size in (0, 100, 10_000):
            body = magic + np.random.default_rng(tail_size).bytes(tail_size)
            add(Case(f"video-magic-{magic_name}-{tail_size}", V, _upload("video", "x.mp4", content=body), {415, 422},
                     {"unreadable", "not_media"}))

    # 3. empty, truncated, corrupt
    add(Case("video-empty", V, _upload("video", "e.mp4", content=b""), 400, "empty"))
    add(Case("image-empty", I, _upload("image", "e.jpg", content=b""), 400, "empty"))
    for fraction in (0.02, 0.1, 0.25, 0.5, 0.75):
        add(Case(f"video-truncated-faststart-{fraction}", V,
                 lambda files, f=fraction: {"files": {"video": ("t.mp4", files["full.mp4"][:int(len(files["full.mp4"]) * f)])}},
                 {415, 422}, {"unreadable", "not_media"}))
        add(Case(f"video-truncated-tailindex-{fraction}", V,
                 lambda files, f=fraction: {"files": {"video": ("t.mp4", files["tail.mp4"][:int(len(files["tail.mp4"]) * f)])}},
                 422, "unreadable"))
    for key in ("faceless.mkv", "faceless.webm", "faceless.avi"):
        for fraction in (0.05, 0.3):
            add(Case(f"video-truncated-{key}-{fraction}", V,
                     lambda files, f=fraction, k=key: {"files": {"video": ("t", files[k][:int(len(files[k]) * f)])}},
                     422, "unreadable"))
    for seed in range(4):  # bit rot in the middle of the data: decodes with damage or is refused, never a 5xx
        def rot(files, seed=seed):
            data = bytearray(files["full.mp4"])
            rng = np.random.default_rng(seed)
            for i in rng.integers(len(data) // 3, len(data), 64):
                data[i] ^= 0xFF
            return {"files": {"video": ("rot.mp4", bytes(data))}}
        add(Case(f"video-bitrot-{seed}", V, rot, {422}, {"no_face", "unreadable"}))
    for key in ("still.jpg", "still.png", "still.webp"):
        for fraction in (0.3, 0.7):
            add(Case(f"image-truncated-{key}-{fraction}", I,
                     lambda files, f=fraction, k=key: {"files": {"image": ("t", files[k][:int(len(files[k]) * f)])}},
                     {422}, {"unreadable", "no_face"}))

    # 4. decompression bombs and header lies: refused from the header, before decoding
    for key, route, field in (("bomb.png", I, "image"), ("bomb_header.png", I, "image"), ("lie.jpg", I, "image"),
                              ("lie.bmp", I, "image"), ("lie.webp", I, "image"),
                              ("big_frames.mp4", V, "video"), ("big_frames.mkv", V, "video")):
        add(Case(f"bomb-{route[1:]}-{key}", route, _upload(field, key, key), 413, "too_large", words="pixels",
                 tags={"bomb"}))
    add(Case("image-gif-claiming-huge", I, _upload("image", "lie.gif", "lie.gif"), 415, "not_image"))
    for key in ("bomb.png", "lie.jpg", "still.png"):
        add(Case(f"video-gets-image-{key}", V, _upload("video", key, key), 415, "not_video", words="image"))

    # 5. wrong kinds, limits, codecs, time
    for key in ("faceless.mp4", "faceless.mkv", "faceless.avi", "faceless.webm"):
        add(Case(f"image-gets-video-{key}", I, _upload("image", key, key), 415, "not_image"))
        add(Case(f"video-faceless-{key}", V, _upload("video", key, key), 422, "no_face"))
    add(Case("video-1000fps-timing", V, _upload("video", "fast.mp4", "fast1000.mp4"), 422, "no_face",
             words="over 1.5 s"))
    add(Case("video-too-long", V, _upload("video", "long.mp4", "long.mp4"), 422, "too_long", words="longer than"))
    add(Case("video-unknown-codec", V, _upload("video", "odd.avi", "odd.avi"), 415, "unsupported_codec"))
    add(Case("image-too-small", I, _upload("image", "tiny.png", "tiny.png"), 422, "too_small"))
    for key in ("still.jpg", "still.png", "still.bmp", "still.webp", "still.tiff"):
        add(Case(f"image-faceless-{key}", I, _upload("image", key, key), 422, "no_face"))
    huge = np.random.default_rng(9).bytes(4 * 2**20)
    add(Case("video-too-large", V, _upload("video", "h.mp4", content=huge), 413, "too_large", words="upload limit"))
    add(Case("image-too-large", I, _upload("image", "h.jpg", content=huge), 413, "too_large", words="upload limit"))

    def chunked(field):
        boundary = "hostileboundary"

        def gen():
            yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"h\"\r\n\r\n").encode()
            for i in range(0, len(huge), 256 * 1024):
                yield huge[i:i + 256 * 1024]
            yield f"\r\n--{boundary}--\r\n".encode()
        return lambda files: {"data": gen(), "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}
    add(Case("video-too-large-chunked", V, chunked("video"), 413, "too_large"))
    add(Case("image-too-large-chunked", I, chunked("image"), 413, "too_large"))
    add(Case("video-length-lie-huge", V, _raw(b"x", "multipart/form-data; boundary=b",
                                               {"Content-Length": "1"}), 400, "bad_request"))

    # 6. odd file names: the server never uses them (a valid faceless video -> no_face)
    add(Case("video-name-5000", V, _upload("video", "x" * 5000 + ".mp4", "faceless.mp4"), 400, "bad_request",
             words="file name"))
    for label, name in {"long": "x" * 4000 + ".mp4", "traversal": "../../../../etc/passwd", "abs": "/etc/shadow",
                        "m3u8": "video.m3u8", "txt": "video.txt", "unicode": "vidéo 视频 🎥.mp4", "quotes": "a\"b'c.mp4",
                        "dots": "....", "spaces": "   .mp4", "semicolon": "a;b=c.mp4",
                        "ffmpeg_url": "concat:a.mp4|b.mp4", "pipe": "pipe:0", "backslash": "..\\..\\x.mp4"}.items():
        add(Case(f"video-name-{label}", V, _upload("video", name, "faceless.mp4"), 422, "no_face"))

    # 7. malformed multipart and wrong content types
    add(Case("video-no-boundary", V, _raw(b"x", "multipart/form-data"), 400, "bad_request", words="boundary"))
    add(Case("video-wrong-field", V, lambda files: {"files": {"file": ("a.mp4", files["faceless.mp4"])}}, 400,
             "bad_request"))
    add(Case("video-extra-field", V, lambda files: {"files": {"video": ("a.mp4", files["faceless.mp4"]),
                                                              "other": ("b.bin", b"\xff\xfe\x00" * 100)}},
             422, "no_face"))  # an extra field is ignored
    for label, url in {"loopback": "http://127.0.0.1:9/x.mp4", "public": "http://93.184.215.14/x.mp4",
                       "file": f"file://{canary}", "path": str(canary)}.items():  # never downloaded or opened
        add(Case(f"video-text-field-{label}", V, lambda files, u=url: {"files": {"video": (None, u)}}, 400,
                 "bad_request", words="holds text", tags={"canary"}))
        add(Case(f"image-text-field-{label}", I, lambda files, u=url: {"files": {"image": (None, u)}}, 400,
                 "bad_request", words="holds text"))
    add(Case("video-empty-multipart", V, _raw(b"", "multipart/form-data; boundary=abc"), 400, "bad_request"))
    add(Case("video-garbage-multipart", V, _raw(b"--abc\r\n\xff\xfe garbage", "multipart/form-data; boundary=abc"),
             400, "bad_request"))
    add(Case("video-boundary-mismatch", V, lambda files: {
        "data": b"--zzz\r\nContent-Disposition: form-data; name=\"video\"; filename=\"a\"\r\n\r\nabc\r\n--zzz--\r\n",
        "headers": {"Content-Type": "multipart/form-data; boundary=abc"}}, 400, "bad_request"))
    add(Case("video-unterminated-multipart", V, lambda files: {
        "data": b"--abc\r\nContent-Disposition: form-data; name=\"video\"; filename=\"a\"\r\n\r\n" + files["faceless.mp4"],
        "headers": {"Content-Type": "multipart/form-data; boundary=abc"}}, {400, 422}, {"bad_request", "no_face"}))
    for label, ctype in {"raw_mp4": "video/mp4", "json": "application/json", "text": "text/plain",
                         "form": "application/x-www-form-urlencoded", "none": None, "octet": "application/octet-stream"}.items():
        add(Case(f"video-content-type-{label}", V, lambda files, c=ctype: {
            "data": files["faceless.mp4"], "headers": {"Content-Type": c} if c else {}}, 415, "bad_content_type"))
        add(Case(f"image-content-type-{label}", I, lambda files, c=ctype: {
            "data": files["still.jpg"], "headers": {"Content-Type": c} if c else {}}, 415, "bad_content_type"))

    # 8. clips: shapes, types, values, counts, floods
    zero = np.zeros(CLIP_SHAPE, np.uint8)
    for label, shape in {"4d": CLIP_SHAPE, "6d": (1, 1, *CLIP_SHAPE), "wrong_t": (1, 4, 64, 64, 3),
                         "wrong_h": (1, 8, 32, 64, 3), "wrong_c": (1, 8, 64, 64, 1), "rgba": (1, 8, 64, 64, 4),
                         "b0": (0, *CLIP_SHAPE), "flat": (8 * 64 * 64 * 3,), "scalar": ()}.items():
        add(Case(f"clips-shape-{label}", C, _json({"clips": np.zeros(shape, np.uint8).tolist()}), 400, "bad_clips"))
        add(Case(f"clips-compact-shape-{label}", C, _json(_compact(shape)), 400, "bad_clips"))
    one = zero[None]
    for label, value in {"300": 300, "-1": -1, "float_big": 255.6, "1e400": "1e400", "string": '"a"',
                         "null": "null", "object": '{"a": 1}', "nan": "NaN", "inf": "Infinity", "-inf": "-Infinity",
                         "true": "true", "false": "false"}.items():
        text = json.dumps({"clips": one.tolist()}).replace("0", "X", 1).replace("X", str(value), 1)
        words = "true/false" if label in ("true", "false") else ""
        add(Case(f"clips-value-{label}", C, _json(text.encode()), 400, "bad_clips", words=words))
    last_true = one.tolist()
    last_true[-1][-1][-1][-1][-1] = True
    encode_one = _compact((1, *CLIP_SHAPE))["clips"]["data"]
    for label, payload in {"ragged": {"clips": [[[0]], [[0, 0]]]}, "wrong_key": {"clip": one.tolist()},
                           "no_key": {}, "list_top": [one.tolist()], "string": "clips", "number": 5, "null": None,
                           "dtype_f32": _compact((1, *CLIP_SHAPE), dtype="float32"),
                           "bad_base64": _compact((1, *CLIP_SHAPE), data="!!!!"),
                           "short_data": _compact((1, *CLIP_SHAPE), data="AAAA"),
                           "data_number": {"clips": {"shape": [1, *CLIP_SHAPE], "data": 5}},
                           "negative_shape": {"clips": {"shape": [-1, *CLIP_SHAPE], "data": ""}},
                           "shape_strings": {"clips": {"shape": ["a"], "data": ""}},
                           "huge_shape": {"clips": {"shape": [1, 10**6, 10**6, 10**6, 3], "data": "AAAA"}},
                           # JSON true/false are not pixels or sizes (numpy would read them as 1/0)
                           "all_booleans": {"clips": (one > 0).tolist()},
                           "boolean_last": {"clips": last_true},
                           "shape_boolean": {"clips": {"shape": [True, *CLIP_SHAPE], "data": encode_one}},
                           "shape_float": {"clips": {"shape": [1.0, *CLIP_SHAPE], "data": encode_one}},
                           "deep_nesting": None}.items():
        body = json.dumps(payload).encode() if label != "deep_nesting" else \
            b'{"clips": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        words = {"all_booleans": "true/false", "boolean_last": "true/false", "shape_boolean": "integers",
                 "shape_float": "integers"}.get(label, "")
        add(Case(f"clips-malformed-{label}", C, _json(body), 400, "bad_clips", words=words))
    for label, body in {"truncated": b'{"clips": [[[', "not_json": b"hello", "empty": b"", "binary": bytes(range(256)) * 4,
                        "utf16": '{"clips": 1}'.encode("utf-16")}.items():
        add(Case(f"clips-body-{label}", C, _json(body), 400, "bad_clips"))
    add(Case("clips-too-many-compact", C, _json({"clips": {"shape": [1000, *CLIP_SHAPE], "data": ""}}), 413,
             "too_many_clips", words="at most 8"))
    add(Case("clips-too-many-nested", C, _json({"clips": [[0]] * 9}), 413, "too_many_clips"))
    add(Case("clips-too-many-100k", C, _json({"clips": [[0]] * 100_000}), 413, "too_many_clips"))
    flood = b'{"clips": [' + b"0, " * (2 * 2**20) + b"0]}"
    add(Case("clips-flood-body", C, _json(flood), 413, "too_large", words="JSON body"))

    def chunked_flood(files):
        def gen():
            yield b'{"clips": ['
            for _ in range(40):
                yield b"0, " * 50_000
            yield b"0]}"
        return {"data": gen(), "headers": {"Content-Type": "application/json"}}
    add(Case("clips-flood-chunked", C, chunked_flood, 413, "too_large"))
    for label, ctype in {"multipart": None, "text": "text/plain", "octet": "application/octet-stream"}.items():
        if label == "multipart":
            add(Case("clips-multipart-binary", C, lambda files: {"files": {"clips": ("x.bin", bytes(range(256)) * 8)}},
                     415, "bad_content_type"))
        else:
            add(Case(f"clips-content-type-{label}", C, _raw(b'{"clips": 1}', ctype), 415, "bad_content_type"))

    # 9. routes and methods
    for method, route, status, code in (("GET", V, 405, "method_not_allowed"), ("PUT", V, 405, "method_not_allowed"),
                                        ("DELETE", C, 405, "method_not_allowed"), ("GET", C, 405, "method_not_allowed"),
                                        ("PATCH", I, 405, "method_not_allowed"),
                                        ("GET", "/nope", 404, "not_found"), ("POST", "/nope", 404, "not_found"),
                                        ("GET", "/predict_video/../../etc/passwd", 404, "not_found"),
                                        ("GET", "/demo/../../serving/service.py", 404, "not_found"),
                                        ("GET", "/classify_clips_unbatched", 404, "not_found"),
                                        ("POST", "/classify_clips_unbatched", 404, "not_found")):
        add(Case(f"route-{method}-{route}", route, lambda files: {}, status, code, method=method))
    # controls: the same server answers good requests (the canary itself is a readable face video)
    add(Case("control-canary-direct", V, _upload("video", "canary.mp4", "canary.mp4"), 200, None))
    add(Case("control-clips", C, _json({"clips": one.tolist()}), 200, None))
    return out
