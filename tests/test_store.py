import hashlib
import os
import random
import struct
import warnings
import zlib

import pytest
from PIL import Image

from mmloop import store as store_module
from mmloop.store import ImageStore, MissingImage, RefusedImage, StoredImage, inside, read_index

WHERE = "data/coco.json: images[3] (id 7)"


@pytest.fixture
def data_root(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def store(data_root):
    return ImageStore(data_root / "store")


def save(path, image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def halves(mode, size, left, right):
    """An image whose left half is one colour and right half another."""
    image = Image.new(mode, size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(width, height, bit_depth, colour_type, idat=b""):
    """A PNG written by hand: PIL cannot write 16-bit RGB, nor a header with no pixels."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    chunks = png_chunk(b"IHDR", header) + (png_chunk(b"IDAT", idat) if idat else b"")
    return b"\x89PNG\r\n\x1a\n" + chunks + png_chunk(b"IEND", b"")


def stored_file(data_root, result):
    return data_root / result.path


def assert_stored_rgb_png(data_root, result):
    path = stored_file(data_root, result)
    data = path.read_bytes()
    assert result.path == f"store/{result.sha256[:2]}/{result.sha256}.png"
    assert hashlib.sha256(data).hexdigest() == result.sha256
    assert data[24] == 8  # IHDR bit depth: 8 bits per channel
    with Image.open(path) as image:
        assert (image.format, image.mode) == ("PNG", "RGB")
        assert image.size == (result.width, result.height)
        assert not image.getexif()
        return image.convert("RGB")


# ---------------------------------------------------------------- kept bytes


def test_rgb_jpeg_keeps_its_bytes_hard_linked(tmp_path, data_root, store):
    source = save(tmp_path / "src" / "a.jpg", halves("RGB", (16, 8), (200, 30, 30), (30, 30, 200)), quality=90)
    result = store.add(source, WHERE)
    data = source.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    assert result == StoredImage(sha256=sha, path=f"store/{sha[:2]}/{sha}.jpg", width=16, height=8)
    assert stored_file(data_root, result).read_bytes() == data
    assert stored_file(data_root, result).stat().st_ino == source.stat().st_ino
    summary = store.summary()
    assert (summary["linked"], summary["copied"], summary["kept"], summary["bytes"]) == (1, 0, 1, len(data))


def test_rgb_jpeg_is_copied_when_link_is_false(tmp_path, data_root):
    source = save(tmp_path / "src" / "a.jpg", Image.new("RGB", (8, 8), (10, 120, 200)))
    store = ImageStore(data_root / "store", link=False)
    result = store.add(source, WHERE)
    stored = stored_file(data_root, result)
    assert stored.read_bytes() == source.read_bytes()
    assert stored.stat().st_ino != source.stat().st_ino
    assert (store.summary()["linked"], store.summary()["copied"]) == (0, 1)


def test_failed_hard_link_falls_back_to_a_copy(tmp_path, data_root, store, monkeypatch):
    source = save(tmp_path / "src" / "a.jpg", Image.new("RGB", (8, 8), (10, 120, 200)))

    def cross_device(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(store_module.os, "link", cross_device)
    result = store.add(source, WHERE)
    stored = stored_file(data_root, result)
    assert stored.read_bytes() == source.read_bytes()
    assert stored.stat().st_ino != source.stat().st_ino
    assert (store.summary()["linked"], store.summary()["copied"]) == (0, 1)
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]  # no temp file left behind


def test_rgb_png_and_camera_mpo_keep_their_bytes(tmp_path, data_root, store):
    png = save(tmp_path / "src" / "a.png", Image.new("RGB", (6, 4), (1, 2, 3)))
    # A camera JPEG with a second (preview) picture: two frames, but not an animation.
    mpo = save(tmp_path / "src" / "b.jpg", Image.new("RGB", (8, 6), (200, 10, 10)), format="MPO",
               save_all=True, append_images=[Image.new("RGB", (4, 3), (10, 10, 200))])
    with Image.open(mpo) as image:
        assert (image.format, image.n_frames) == ("MPO", 2)
    for source, ext in ((png, "png"), (mpo, "jpg")):
        result = store.add(source, WHERE)
        assert result.converted is None
        assert result.path.endswith(f".{ext}")
        assert stored_file(data_root, result).read_bytes() == source.read_bytes()
    store.write_index()
    index = read_index(data_root)
    assert index.lookup(mpo, WHERE).width == 8
    import pyarrow.parquet as pq

    assert pq.read_table(data_root / "store" / "index.parquet").column("format").to_pylist() == ["PNG", "MPO"]


# ---------------------------------------------------------------- conversions


def _cmyk(path):
    return save(path.with_suffix(".jpg"), Image.new("CMYK", (8, 6), (0, 0, 0, 0)), quality=100)


def _palette(path, transparency=None):
    image = Image.new("P", (8, 6), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 - 2) * 3)
    image.paste(1, (4, 0, 8, 6))  # right half: palette entry 1 (red)
    return save(path.with_suffix(".png"), image, **({} if transparency is None else {"transparency": transparency}))


def _gray16(path):
    return save(path.with_suffix(".png"), halves("I;16", (8, 6), 0x8000, 0xFFFF))


def _rgba(path):
    # left half fully transparent black, right half opaque red
    return save(path.with_suffix(".png"), halves("RGBA", (8, 6), (0, 0, 0, 0), (255, 0, 0, 255)))


def _la(path):
    return save(path.with_suffix(".png"), halves("LA", (8, 6), (0, 0), (60, 255)))


def _gray(path):
    return save(path.with_suffix(".png"), halves("L", (8, 6), 77, 200))


def _bilevel(path):
    return save(path.with_suffix(".png"), halves("1", (8, 6), 0, 1))


def _bmp(path):
    return save(path.with_suffix(".bmp"), halves("RGB", (8, 6), (0, 0, 0), (255, 0, 0)))


def _rgb16(path):
    row = b"\x00" + struct.pack(">HHH", 0x1234, 0x8000, 0xFFFF) * 8
    path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw_png(8, 6, 16, 2, zlib.compress(row * 6)))
    return path


# (make the source, expected `converted`, expected RGB of the left and right halves)
CONVERSIONS = {
    "cmyk_jpeg": (_cmyk, "CMYK", (255, 255, 255), (255, 255, 255)),
    "palette": (_palette, "P", (0, 0, 0), (255, 0, 0)),
    "palette_transparent": (lambda p: _palette(p, transparency=0), "P+transparency", (255, 255, 255), (255, 0, 0)),
    "gray16": (_gray16, ("I;16", "I"), (128, 128, 128), (255, 255, 255)),
    "rgba": (_rgba, "RGBA", (255, 255, 255), (255, 0, 0)),
    "la": (_la, "LA", (255, 255, 255), (60, 60, 60)),
    "gray": (_gray, "L", (77, 77, 77), (200, 200, 200)),
    "bilevel": (_bilevel, "1", (0, 0, 0), (255, 255, 255)),
    "bmp": (_bmp, "format:BMP", (0, 0, 0), (255, 0, 0)),
    "rgb16": (_rgb16, "RGB;16", (0x12, 0x80, 0xFF), (0x12, 0x80, 0xFF)),
}


@pytest.mark.parametrize("case", CONVERSIONS)
def test_conversion_to_8bit_rgb_png(tmp_path, data_root, store, case):
    make, converted, left, right = CONVERSIONS[case]
    source = make(tmp_path / "src" / case)
    result = store.add(source, WHERE)
    assert result.converted in (converted if isinstance(converted, tuple) else (converted,))
    assert (result.width, result.height) == (8, 6)
    image = assert_stored_rgb_png(data_root, result)
    tolerance = 2 if case == "cmyk_jpeg" else 0
    for (x, y), want in (((1, 3), left), ((6, 3), right)):
        got = image.getpixel((x, y))
        assert all(abs(g - w) <= tolerance for g, w in zip(got, want)), (case, (x, y), got, want)
    assert store.summary()["encoded"] == 1


def test_exif_orientation_is_not_applied(tmp_path, data_root, store):
    # Orientation 6 says "rotate 90 degrees clockwise to view"; boxes are drawn on the stored
    # pixels, so the store keeps them (and the file) as they are.
    exif = Image.Exif()
    exif[0x0112] = 6  # the EXIF orientation tag
    source = save(tmp_path / "src" / "phone.jpg", halves("RGB", (40, 20), (230, 20, 20), (20, 20, 230)),
                  exif=exif.tobytes(), quality=95)
    result = store.add(source, WHERE)
    assert result.converted is None and (result.width, result.height) == (40, 20)
    assert (data_root / result.path).read_bytes() == source.read_bytes()


def test_summary_counts_conversions_by_kind(tmp_path, store):
    store.add(_cmyk(tmp_path / "src" / "a"), "a")
    store.add(_palette(tmp_path / "src" / "b"), "b")
    store.add(_bmp(tmp_path / "src" / "c"), "c")
    store.add(save(tmp_path / "src" / "d.jpg", Image.new("RGB", (4, 4))), "d")
    summary = store.summary()
    assert summary["converted"] == {"CMYK": 1, "P": 1, "format:BMP": 1}
    # The palette PNG and the BMP hold the same pixels, so they re-encode to one stored file.
    assert (summary["images"], summary["stored"], summary["kept"]) == (4, 3, 1)
    assert (summary["encoded"], summary["linked"]) == (2, 1)


# ---------------------------------------------------------------- refusals


def _refused(store, source, match):
    with pytest.raises(RefusedImage, match=match) as err:
        store.add(source, WHERE)
    assert isinstance(err.value, ValueError)
    assert WHERE in str(err.value) and str(source.resolve()) in str(err.value)
    return str(err.value)


def test_random_bytes_named_jpg_are_refused(tmp_path, data_root, store):
    source = tmp_path / "src" / "noise.jpg"
    source.parent.mkdir()
    source.write_bytes(random.Random(0).randbytes(4096))
    _refused(store, source, "not an image")
    assert not (data_root / "store").exists()


def test_truncated_png_is_refused(tmp_path, store):
    rng = random.Random(0)
    noise = Image.frombytes("RGB", (64, 64), rng.randbytes(64 * 64 * 3))  # incompressible pixels
    full = save(tmp_path / "src" / "full.png", noise)
    source = tmp_path / "src" / "cut.png"
    source.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with Image.open(source) as image:  # the header alone looks fine
        assert image.size == (64, 64)
    _refused(store, source, "not a decodable image")


def test_animated_gif_is_refused(tmp_path, store):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    source = save(tmp_path / "src" / "anim.gif", frames[0], save_all=True, append_images=frames[1:], duration=100)
    _refused(store, source, "multi-frame")


@pytest.mark.parametrize("size", [(12, 10), (40, 40)])  # PIL would warn at 120 pixels, raise at 1600
def test_too_many_pixels_are_refused_without_a_pil_warning(tmp_path, data_root, size):
    store = ImageStore(data_root / "store", max_pixels=100)
    source = save(tmp_path / "src" / "big.png", Image.new("RGB", size))
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message = _refused(store, source, "max_pixels=100")
    assert "refused before decoding" in message
    assert not caught
    assert Image.MAX_IMAGE_PIXELS == limit  # PIL's global limit is not left changed
    assert store.add(save(tmp_path / "src" / "ok.png", Image.new("RGB", (10, 10))), WHERE).width == 10


def test_bomb_is_refused_from_its_header(tmp_path, store):
    # A header claiming 30000 x 30000 pixels over a few bytes of pixel data: decoding would fail
    # as truncated, so this message shows the refusal came from the header.
    source = tmp_path / "src" / "bomb.png"
    source.parent.mkdir()
    source.write_bytes(raw_png(30000, 30000, 8, 2, zlib.compress(b"\x00" * 64)))
    _refused(store, source, "max_pixels=50000000")


def test_missing_file_names_where(tmp_path, store):
    with pytest.raises(FileNotFoundError, match="not found") as err:
        store.add(tmp_path / "src" / "gone.jpg", WHERE)
    assert WHERE in str(err.value) and "gone.jpg" in str(err.value)


# ---------------------------------------------------------------- paths


def test_inside_accepts_paths_within_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    assert inside(root, "sub/../a.jpg", WHERE) == root.resolve() / "a.jpg"
    assert inside(root, str(root / "sub" / "b.jpg"), WHERE) == root.resolve() / "sub" / "b.jpg"
    (root / "link.jpg").symlink_to(root / "sub" / "b.jpg")
    assert inside(root, "link.jpg", WHERE) == root.resolve() / "sub" / "b.jpg"


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "escape.jpg", "sub/../../x.jpg"])
def test_inside_refuses_escapes(tmp_path, name):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.jpg").write_bytes(b"x")
    (root / "escape.jpg").symlink_to(tmp_path / "outside.jpg")
    with pytest.raises(ValueError, match="outside the root") as err:
        inside(root, name, WHERE)
    message = str(err.value)
    assert WHERE in message and repr(name) in message and str(root) in message


@pytest.mark.parametrize("name", ["", None])
def test_inside_refuses_no_name(tmp_path, name):
    with pytest.raises(ValueError, match="non-empty string") as err:
        inside(tmp_path, name, WHERE)
    assert WHERE in str(err.value)


# ---------------------------------------------------------------- identity and the index


def test_same_path_twice_is_not_read_again(tmp_path, store):
    source = save(tmp_path / "src" / "a.png", Image.new("L", (4, 4), 9))
    first = store.add(source, "first")
    source.unlink()  # a second read would fail
    assert store.add(tmp_path / "src" / ".." / "src" / "a.png", "second") == first
    assert store.summary()["images"] == 1


@pytest.mark.parametrize("kept", [True, False])
def test_identical_files_are_stored_once(tmp_path, data_root, store, kept):
    image = Image.new("RGB" if kept else "P", (5, 5))
    one = save(tmp_path / "src" / "one.png", image)
    two = save(tmp_path / "src" / "copy" / "two.png", image)
    assert one.read_bytes() == two.read_bytes()
    first, second = store.add(one, "record 1"), store.add(two, "record 2")
    assert first == second
    assert (first.converted is None) is kept
    stored = [p for p in (data_root / "store").rglob("*") if p.is_file()]
    assert stored == [stored_file(data_root, first)]
    store.write_index()
    index = read_index(data_root)
    assert index.lookup(one, "x") == index.lookup(two, "x") == first
    assert (store.summary()["images"], store.summary()["stored"]) == (2, 1)


def test_index_round_trip(tmp_path, data_root, store):
    import pyarrow.parquet as pq

    jpg = save(tmp_path / "src" / "a.jpg", Image.new("RGB", (8, 4), (1, 2, 3)))
    cmyk = _cmyk(tmp_path / "src" / "b")
    added = {jpg: store.add(jpg, "images[0]"), cmyk: store.add(cmyk, "images[1]")}
    store.add(jpg, "images[2]")  # the first record that named it stays
    path = store.write_index()
    assert path == data_root / "store" / "index.parquet"
    rows = pq.read_table(path).to_pylist()
    # originals are named relative to the folder holding the data root: the same in every checkout
    assert [(row["original"], row["where"], row["format"], row["converted"]) for row in rows] == [
        ("src/a.jpg", "images[0]", "JPEG", None), (cmyk.relative_to(tmp_path).as_posix(), "images[1]", "PNG", "CMYK")]
    index = read_index(data_root)
    assert len(index) == 2
    for source, result in added.items():
        assert index.lookup(source, WHERE) == result
        assert index.by_sha(result.sha256) == result
        assert (data_root / result.path).is_file()
    assert not [p for p in (data_root / "store").rglob(".*")]  # no temp files left behind


def test_index_lookup_errors(tmp_path, data_root, store):
    with pytest.raises(FileNotFoundError, match="dvc repro store"):
        read_index(data_root)
    store.add(save(tmp_path / "src" / "a.jpg", Image.new("RGB", (4, 4))), WHERE)
    store.write_index()
    index = read_index(data_root)
    missing = tmp_path / "src" / "new.jpg"
    with pytest.raises(MissingImage) as err:
        index.lookup(missing, WHERE)
    assert isinstance(err.value, KeyError)
    message = str(err.value)
    assert WHERE in message and str(missing) in message and "dvc repro store" in message
    with pytest.raises(KeyError, match="dvc repro store") as err:
        index.by_sha("0" * 64)
    assert "0" * 64 in str(err.value)


def test_stored_files_are_shared_by_prefix(tmp_path):
    # The prefix is the store directory's name under the data root, and read_index follows it.
    root = tmp_path / "data"
    store = ImageStore(root / "images_in", prefix="images_in")
    result = store.add(save(tmp_path / "src" / "a.png", Image.new("LA", (3, 3))), WHERE)
    assert result.path.startswith("images_in/") and (root / result.path).is_file()
    store.write_index()
    assert read_index(root, prefix="images_in").by_sha(result.sha256) == result
    assert os.path.exists(root / "images_in" / "index.parquet")
