"""Hard to break: odd and bad files, floods, and file-route attacks, against the real app.

The corpus is made here: valid images in odd forms (16-bit, grey, CMYK, palette, animated,
multi-page, WebP, BMP, EXIF-rotated, large JPEG), and bad files (empty, text, PDF, SVG,
EPS, random bytes, truncated, decompression bombs, too small). Fast tests run the corpus
through `lungclf.preprocess`; slow ones send it through `gradio_client` to a running
`python app.py`, flood a server whose queue holds two, and try to read server files
through Gradio's file route.
"""

import io
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from lungclf.preprocess import ImageError, load_image
from tests.helpers import ROOT, AppServer, blob_image, grey_picture, label_id, picture

SIZE = 32


def _save(img, **kw):
    buf = io.BytesIO()
    img.save(buf, **kw)
    return buf.getvalue()


def _cv2_png16(a16):
    import cv2

    return cv2.imencode(".png", a16[:, :, ::-1] if a16.ndim == 3 else a16)[1].tobytes()


def _exif_rotated():
    im = Image.fromarray(np.rot90(picture(), k=1).copy())  # stored on its side ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... with EXIF orientation 6: rotate 90 degrees clockwise to view
    return _save(im, format="JPEG", exif=exif, quality=95)


def _animated_gif():
    first, second = Image.fromarray(picture()), Image.fromarray(255 - picture())
    return _save(first, format="GIF", save_all=True, append_images=[second], duration=100, loop=0)


def _multipage_tiff():
    first, second = Image.fromarray(picture()), Image.fromarray(255 - picture())
    return _save(first, format="TIFF", save_all=True, append_images=[second])


def _large_jpeg():
    """3,000 x 2,000 pixels: decoded at reduced scale (Pillow draft) before the resize."""
    big = Image.fromarray(picture()).resize((2000, 3000), Image.NEAREST)
    return _save(big, format="JPEG", quality=95)


# name -> (file bytes, reference picture it must decode to, mean abs tolerance 0..255)
ODD = {
    "rgb.png": (lambda: _save(Image.fromarray(picture()), format="PNG"), "rgb", 0),
    "grey.jpg": (lambda: _save(Image.fromarray(grey_picture()), format="JPEG", quality=95), "grey", 3),
    "grey16.png": (lambda: _cv2_png16(grey_picture().astype(np.uint16) * 257), "grey", 0),
    "grey16.tif": (lambda: _save(Image.fromarray(grey_picture().astype(np.uint16) * 257), format="TIFF"),
                   "grey", 0),
    "rgb16.png": (lambda: _cv2_png16(picture().astype(np.uint16) * 257), "rgb", 0),
    "rgba.png": (lambda: _save(Image.fromarray(picture()).convert("RGBA"), format="PNG"), "rgb", 0),
    "grey_alpha.png": (lambda: _save(Image.fromarray(grey_picture()).convert("LA"), format="PNG"), "grey", 0),
    "cmyk.jpg": (lambda: _save(Image.fromarray(picture()).convert("CMYK"), format="JPEG", quality=95), "rgb", 4),
    "cmyk.tif": (lambda: _save(Image.fromarray(picture()).convert("CMYK"), format="TIFF"), "rgb", 1),
    "palette.png": (lambda: _save(Image.fromarray(picture()).quantize(8), format="PNG"), "rgb", 0),
    "palette.gif": (lambda: _save(Image.fromarray(picture()).quantize(8), format="GIF"), "rgb", 0),
    "animated.gif": (_animated_gif, "rgb", 0),
    "multipage.tif": (_multipage_tiff, "rgb", 0),
    "lossless.webp": (lambda: _save(Image.fromarray(picture()), format="WEBP", lossless=True), "rgb", 0),
    "lossy.webp": (lambda: _save(Image.fromarray(picture()), format="WEBP", quality=90), "rgb", 6),
    "rgb.bmp": (lambda: _save(Image.fromarray(picture()), format="BMP"), "rgb", 0),
    "progressive.jpg": (lambda: _save(Image.fromarray(picture()), format="JPEG", quality=95,
                                      progressive=True), "rgb", 4),
    "exif_rotated.jpg": (_exif_rotated, "rgb", 4),
    "large.jpg": (_large_jpeg, "rgb", 4),
}


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side=30_000):
    """A real, complete 1-bit PNG of side x side pixels (900 million) in about 100 KB."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def png_header_only(side=30_000):
    """Just the header of a huge PNG, no pixel data: refusing it as too large (not as
    damaged) shows the size is checked on the header, before any decoding."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def jpeg_claiming(width, height):
    """A small JPEG whose frame header (SOF0) claims another size."""
    data = bytearray(_save(Image.fromarray(picture()), format="JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def noise(side=128):
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (side, side, 3), np.uint8))


def truncated(data, keep=0.5):
    return data[: int(len(data) * keep)]


# name -> (file bytes, what the user is told)
BAD = {
    "empty.png": (lambda: b"", "The file is empty"),
    "notes.txt": (lambda: b"these are notes, not an image\n" * 20, "not an image we can read"),
    "report.pdf": (lambda: b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n",
                   "not an image we can read"),
    "drawing.svg": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
                            b'<rect width="64" height="64" fill="red"/></svg>', "not an image we can read"),
    "figure.eps": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n",
                   "not an image we can read"),
    "random.bin": (lambda: np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes(),
                   "not an image we can read"),
    "signature_only.png": (lambda: b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not an image we can read"),
    "truncated.jpg": (lambda: truncated(_save(noise(), format="JPEG")), "damaged or truncated"),
    "truncated.png": (lambda: truncated(_save(noise(), format="PNG")), "damaged or truncated"),
    "bomb.png": (png_bomb, "too large"),
    "bomb_header.png": (png_header_only, "too large"),
    "bomb.jpg": (lambda: jpeg_claiming(40_000, 40_000), "too large"),
    "tiny.png": (lambda: _save(Image.fromarray(picture(8, 8)), format="PNG"), "too small"),
    "sliver.png": (lambda: _save(Image.fromarray(picture(4, 400)), format="PNG"), "too small"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Write every corpus file once; name -> path."""
    folder = tmp_path_factory.mktemp("corpus")
    paths = {}
    for name, entry in {**ODD, **BAD}.items():
        paths[name] = str(folder / name)
        with open(paths[name], "wb") as f:
            f.write(entry[0]())
    return paths


def _reference(kind):
    a = picture() if kind == "rgb" else np.repeat(grey_picture()[:, :, None], 3, axis=2)
    return load_image(_save(Image.fromarray(a), format="PNG"), SIZE)


@pytest.mark.parametrize("name", ODD)
def test_odd_but_valid_image_decodes_to_the_same_picture(corpus, name):
    _, kind, tolerance = ODD[name]
    x = load_image(corpus[name], SIZE)
    assert x.shape == (SIZE, SIZE, 3) and x.dtype == np.float32
    assert np.abs(x - _reference(kind)).mean() <= tolerance + 0.5


@pytest.mark.parametrize("name", BAD)
def test_bad_file_is_refused_with_a_specific_message(corpus, name):
    with pytest.raises(ImageError, match=BAD[name][1]):
        load_image(corpus[name], SIZE)


def test_decompression_bomb_is_refused_without_decoding_it(corpus, monkeypatch):
    """900 million pixels: refused from the header, before Pillow decodes a pixel."""
    decoded = []
    real_load = ImageFile.ImageFile.load

    def load(im):
        decoded.append(im.size)
        return real_load(im)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(ImageError, match="too large"):
        load_image(corpus["bomb.png"], SIZE)
    assert decoded == []
    load_image(corpus["rgb.png"], SIZE)
    assert decoded  # the control: a valid image does go through the watched decoder


# --- through the running app -------------------------------------------------------------

def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def _predict(client, path):
    from gradio_client import handle_file

    return client.predict(handle_file(path), api_name="/predict")[0]  # output 0: the gr.Label value


@pytest.fixture(scope="module")
def good_image(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("good") / "red.png")
    blob_image("red", 7).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", BAD)
def test_bad_upload_gets_its_message_and_the_next_upload_works(tiny_server, corpus, good_image, name):
    from gradio_client.exceptions import AppError

    client = _client(tiny_server.url)
    with pytest.raises(AppError) as refused:
        _predict(client, corpus[name])
    message = str(refused.value)
    assert BAD[name][1] in message
    assert "Traceback" not in message and ROOT not in message and "/tmp" not in message
    assert label_id(_predict(client, good_image)["label"]) == "red"


@pytest.mark.slow
@pytest.mark.parametrize("name", ODD)
def test_odd_but_valid_upload_is_classified(tiny_server, corpus, name):
    result = _predict(_client(tiny_server.url), corpus[name])
    assert label_id(result["label"]) in {"red", "green", "blue"}
    assert abs(sum(c["confidence"] for c in result["confidences"]) - 1) < 1e-4


@pytest.fixture(scope="module")
def small_queue_server(tiny_bundle):
    """One prediction at a time, two waiting, uploads up to 1 MB."""
    with AppServer({"MODEL_REPO": tiny_bundle["out"], "CONCURRENCY_LIMIT": "1",
                    "QUEUE_SIZE": "2", "MAX_FILE_SIZE": "1mb"}) as server:
        yield server


@pytest.mark.slow
def test_upload_over_max_file_size_is_refused_by_the_server(small_queue_server):
    import httpx

    big = np.random.default_rng(0).integers(0, 256, 2_000_000, np.uint8).tobytes()
    r = httpx.post(small_queue_server.url + "gradio_api/upload",
                   files={"files": ("big.png", big, "image/png")}, timeout=30)
    assert r.status_code == 413
    assert "maximum" in r.text.lower() and "Traceback" not in r.text


@pytest.mark.slow
def test_flood_beyond_the_queue_gets_answers_or_busy_refusals_without_waiting(small_queue_server, tmp_path):
    """Twelve clients at once against a queue of two: each gets a prediction or a "queue is
    full" refusal, a refused client is told at once (before the queued work is done, not
    after waiting its turn), and the server goes on serving."""
    from gradio_client.utils import QueueError

    # 36 million pixels of smooth gradient: a small file that takes a while to decode.
    slow = str(tmp_path / "slow.png")
    Image.fromarray(np.tile(np.linspace(0, 255, 6000).astype(np.uint8), (6000, 1))).save(slow)
    clients = [_client(small_queue_server.url) for _ in range(12)]
    start = threading.Barrier(len(clients))
    finished, lock = [], threading.Lock()  # (client, outcome) in the order the clients heard back

    def user(i):
        start.wait()
        try:
            _predict(clients[i], slow)
            outcome = "answer"
        except QueueError:
            outcome = "busy"
        except Exception as e:  # anything else is a failure of this test
            outcome = f"{type(e).__name__}: {e}"
        with lock:
            finished.append(outcome)

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)  # a guard against a hang, not a speed claim
    assert len(finished) == len(clients), f"{len(clients) - len(finished)} client(s) hung: {finished}"
    assert set(finished) <= {"answer", "busy"}, finished
    assert "busy" in finished and "answer" in finished, finished
    last_answer = len(finished) - 1 - finished[::-1].index("answer")
    assert "busy" not in finished[last_answer:], finished  # refusals came before the queue drained
    small = str(tmp_path / "red.png")
    blob_image("red", 3).save(small)
    assert label_id(_predict(clients[0], small)["label"]) == "red"


FILE_ROUTE_ATTACKS = [
    "gradio_api/file=/etc/passwd",
    "gradio_api/file=/proc/self/environ",
    "gradio_api/file=app.py",
    "gradio_api/file=../app.py",
    "gradio_api/file=%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "gradio_api/file=..%2f..%2f..%2fetc%2fpasswd",
    f"gradio_api/file={ROOT}/app.py",
    f"gradio_api/file={ROOT}/models/lc25000/metadata.json",
    "file=/etc/passwd",
    "gradio_api/file=/tmp/gradio/../../etc/passwd",
]


@pytest.mark.slow
@pytest.mark.parametrize("route", FILE_ROUTE_ATTACKS)
def test_server_files_are_not_readable_through_the_file_route(tiny_server, route):
    import httpx

    r = httpx.get(tiny_server.url + route, timeout=10)
    assert r.status_code in (403, 404), (r.status_code, r.text[:200])
    assert "root:" not in r.text and "import" not in r.text and "PATH=" not in r.text


@pytest.mark.slow
def test_an_uploaded_file_is_readable_through_the_file_route(tiny_server, good_image):
    """The control for the attacks above: the route itself works for the user's own upload."""
    import httpx

    with open(good_image, "rb") as f:
        up = httpx.post(tiny_server.url + "gradio_api/upload", files={"files": ("red.png", f, "image/png")})
    path = up.json()[0]
    r = httpx.get(tiny_server.url + "gradio_api/file=" + path, timeout=10)
    assert r.status_code == 200 and r.content == open(good_image, "rb").read()


@pytest.mark.slow
def test_a_server_path_in_the_request_is_refused_not_read(tiny_server, good_image):
    """A client that names a file on the server instead of uploading one gets no prediction."""
    import httpx

    body = {"data": [{"path": good_image, "meta": {"_type": "gradio.FileData"}}, None]}
    event = httpx.post(tiny_server.url + "gradio_api/call/predict", json=body, timeout=10).json()
    stream = httpx.get(tiny_server.url + "gradio_api/call/predict/" + event["event_id"], timeout=30).text
    assert "event: error" in stream and "confidences" not in stream
