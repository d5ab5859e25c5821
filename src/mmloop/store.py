"""The image store: every user image, checked and normalised once, content-addressed.

Every image a data file names (COCO instances, LLaVA/ShareGPT JSON, an image folder) is
imported once by the `store` stage. The store keeps it at `<directory>/<sha[:2]>/<sha>.<ext>`,
where sha is the sha256 of the stored bytes; downstream stages refer to it by the path
relative to the data root, `<prefix>/<sha[:2]>/<sha>.<ext>` (like the world's
`images/<sha[:2]>/<sha>.png`).

On import an image must decode completely with PIL, have one frame and at most
`max_pixels` pixels (checked from the header, before any pixel is decoded). It is then
normalised to 8-bit RGB:
- a JPEG, PNG or WebP that already is 8-bit RGB keeps its original bytes (hard-linked when
  allowed, else copied);
- anything else is re-encoded as PNG: alpha and transparency composited on white; palette,
  grayscale, CMYK and other modes converted; 16-bit values reduced to their top 8 bits.
EXIF orientation is not applied: annotations (COCO's boxes) are drawn on the pixels as stored,
and model processors read them that way too.

`converted` records what was done, comma-separated, in this order: the original mode ("CMYK", "P", "I;16", "RGBA", "L", ...; "+transparency" when the image
carried a transparent colour; "RGB;16" for a 16-bit-per-channel RGB PNG); "format:<F>" when
the original format is not one the store keeps (BMP, TIFF, GIF, ...). Null when the bytes
were kept. Resizing is not the store's job: the model's processor does it.

`index.parquet` in the store directory has one row per original file (`index_schema`);
`read_index` reads it back for the stages that map a data file's image names to the store.
"""

from __future__ import annotations

import functools
import io
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmloop.io import atomic_path, sha256_bytes, write_bytes

# Formats whose 8-bit RGB files every consumer reads as they are; extension of the stored file.
# MPO is a camera JPEG with extra pictures (previews, depth): a JPEG reader sees the primary one.
KEPT_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
INDEX_NAME = "index.parquet"
RUN_STORE = "run the store stage: dvc repro store"


@dataclass(frozen=True)
class StoredImage:
    sha256: str
    path: str          # relative to the data root: "store/ab/<sha>.png"
    width: int
    height: int
    converted: str | None = None


class RefusedImage(ValueError):
    """An image the store will not take (undecodable, too large, multi-frame, unreadable)."""


class MissingImage(KeyError):
    """An image the store index does not have (a KeyError whose message reads plainly)."""

    def __str__(self) -> str:
        return str(self.args[0])


def inside(root: str | os.PathLike, name: str, where: str) -> Path:
    """`root / name` resolved (symlinks followed); refused unless it stays within `root`.

    Data files name images relative to their own directory; `..`, an absolute path elsewhere
    or a symlink out of `root` would let a data file read any file on the machine.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: image name must be a non-empty string, got {name!r}")
    try:
        base = Path(root).resolve()
        path = (base / name).resolve()
    except (OSError, RuntimeError, ValueError) as err:  # symlink loop, NUL byte
        raise ValueError(f"{where}: cannot resolve {name!r} under {root}: {err}") from None
    if not path.is_relative_to(base):
        raise ValueError(f"{where}: {name!r} resolves to {path}, outside the root {root}; "
                         f"image paths must stay inside it")
    return path


@functools.cache
def index_schema():
    """One row per original file: the stored image (sha256, path, width, height, format of the
    stored file, converted), the source file (original, as `original_key` names it) and the
    first record that named it (where)."""
    import pyarrow as pa

    return pa.schema([
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("format", pa.string(), nullable=False),
        pa.field("converted", pa.string()),
        pa.field("original", pa.string(), nullable=False),
        pa.field("where", pa.string()),
    ])


class ImageStore:
    """Imports images into `directory`; `add` each one, then `write_index`."""

    def __init__(self, directory: str | os.PathLike, *, prefix: str = "store",
                 max_pixels: int = 50_000_000, link: bool = True):
        if max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {max_pixels}")
        self.directory = Path(directory)
        self.prefix = prefix.strip("/")
        # The folder holding the data root: original files are named relative to it (the
        # project, for the stages). `directory` may be a temporary sibling of the final store.
        self.base = self.directory.resolve().parents[len(Path(self.prefix).parts)]
        self.max_pixels = int(max_pixels)
        self.link = link
        self._rows: list[dict[str, Any]] = []
        self._by_original: dict[str, StoredImage] = {}
        # sha256 of a source file's bytes -> (stored image, stored format): identical files decode once.
        self._by_source: dict[str, tuple[StoredImage, str]] = {}
        self._written: dict[str, str] = {}  # stored sha -> how it was written (see _write)
        self._bytes = 0

    def add(self, path: str | os.PathLike, where: str) -> StoredImage:
        """Store the image at `path` (once per resolved path and per content) and return it.

        `where` names the record that asked for it, for errors and the index."""
        source = Path(path).resolve()
        key = original_key(source, self.base)
        if key in self._by_original:
            return self._by_original[key]
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{where}: {source}: image file not found") from None
        except OSError as err:
            raise RefusedImage(f"{where}: {source}: cannot read the image: {err.strerror or err}") from None

        source_sha = sha256_bytes(data)
        if source_sha in self._by_source:
            stored, fmt = self._by_source[source_sha]
        else:
            stored, fmt = self._import(source, data, where)
            self._by_source[source_sha] = (stored, fmt)
        self._by_original[key] = stored
        self._rows.append({"sha256": stored.sha256, "path": stored.path, "width": stored.width,
                           "height": stored.height, "format": fmt, "converted": stored.converted,
                           "original": key, "where": where})
        return stored

    def _import(self, source: Path, data: bytes, where: str) -> tuple[StoredImage, str]:
        image = self._decode(source, data, where)
        fmt = image.format
        try:
            image, converted = _normalise(image, data, fmt)
        except Exception as err:  # a mode or EXIF block PIL cannot handle
            raise RefusedImage(f"{where}: {source}: cannot convert this {fmt} image (mode {image.mode}) "
                               f"to RGB: {type(err).__name__}: {err}") from None
        if converted:
            image.info = {}  # no EXIF, ICC or transparency carried into the re-encoded file
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            stored_bytes, stored_format = buffer.getvalue(), "PNG"
        else:
            stored_bytes, stored_format = data, fmt
        sha = sha256_bytes(stored_bytes)
        name = f"{sha[:2]}/{sha}.{KEPT_FORMATS[stored_format]}"
        if sha not in self._written:
            self._written[sha] = self._write(self.directory / name, stored_bytes,
                                             None if converted else source)
            self._bytes += len(stored_bytes)
        stored = StoredImage(sha256=sha, path=f"{self.prefix}/{name}", width=image.width,
                             height=image.height, converted=",".join(converted) or None)
        return stored, stored_format

    def _decode(self, source: Path, data: bytes, where: str):
        """Open and fully load the image; refuse bombs, multi-frame and undecodable files."""
        from PIL import Image

        # PIL warns above MAX_IMAGE_PIXELS and raises above twice that, from Image.open (and
        # GIF/TIFF frame seeks): with its limit set to ours and the warning made an error, the
        # refusal comes from the header alone, before any pixel is decoded, with our message.
        # The limit is PIL's global, so it is put back for the rest of the process.
        previous_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, self.max_pixels
        too_big = f"{where}: {source}: image has more than max_pixels={self.max_pixels} pixels"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                if image.width * image.height > self.max_pixels:  # in case PIL did not check
                    raise RefusedImage(f"{too_big} ({image.width}x{image.height}); refused before decoding")
                # MPO is a camera JPEG whose extra frames are previews, not animation.
                if image.format != "MPO" and getattr(image, "is_animated", False):
                    raise RefusedImage(f"{where}: {source}: animated (multi-frame) {image.format} image; "
                                       f"the store takes single-frame images")
                image.load()  # decode every pixel: truncated and corrupt data fail here
        except RefusedImage:
            raise
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
            # PIL's text gives its own (possibly doubled) limit; keep only the pixel count.
            count = re.search(r"\((\d+) pixels\)", str(err))
            size = f" ({count.group(1)} pixels)" if count else ""
            raise RefusedImage(f"{too_big}{size}; refused before decoding (possible decompression bomb)") from None
        except Image.UnidentifiedImageError:
            raise RefusedImage(f"{where}: {source}: not an image (PIL cannot identify its format)") from None
        except Exception as err:  # PIL raises many types for bad data (OSError, SyntaxError, EOFError, ...)
            raise RefusedImage(f"{where}: {source}: not a decodable image: "
                               f"{type(err).__name__}: {err}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = previous_limit
        return image

    def _write(self, target: Path, data: bytes, source: Path | None) -> str:
        """Publish the stored file atomically: re-encoded bytes are written ("encoded"); kept
        ones are a hard link to `source` when allowed ("linked"), else a copy ("copied")."""
        if target.exists():  # same content, from an earlier run or another source
            return "existing"
        if source is None or not self.link:
            write_bytes(target, data)
            return "encoded" if source is None else "copied"
        with atomic_path(target) as tmp:
            tmp.unlink()
            try:
                os.link(source, tmp)
                return "linked"
            except OSError:  # another filesystem, no hard links, no permission
                tmp.write_bytes(data)
                return "copied"

    def write_index(self) -> Path:
        """Write `<directory>/index.parquet`, one row per original file; return its path."""
        from mmloop.schema import write_samples

        path = self.directory / INDEX_NAME
        write_samples(self._rows, path, schema=index_schema())
        return path

    def summary(self) -> dict[str, Any]:
        """Counts for the stage's metrics."""
        kinds = Counter(kind for row in self._rows if row["converted"]
                        for kind in row["converted"].split(","))
        written = Counter(self._written.values())
        return {
            "images": len(self._rows),
            "stored": len(self._written),
            "kept": sum(1 for row in self._rows if not row["converted"]),
            "converted": dict(sorted(kinds.items())),
            "linked": written["linked"],
            "copied": written["copied"],
            "encoded": written["encoded"],
            "existing": written["existing"],
            "bytes": self._bytes,
        }


def _normalise(image, data: bytes, fmt: str):
    """(8-bit RGB image, [what was converted]); an empty list means keep the original bytes."""
    from PIL import Image

    converted: list[str] = []
    mode, transparent = image.mode, "transparency" in image.info
    if mode != "RGB" or transparent:
        converted.append(mode + ("+transparency" if transparent else ""))
        if mode == "I" or mode.startswith("I;16"):
            # 16-bit grayscale: keep the top 8 bits (larger I values clip to white). A 16-bit
            # transparent grey is dropped, not composited: it cannot be mapped to 8 bits.
            image = image.convert("I").point(lambda value: value / 256).convert("L")
            transparent = False
        if image.mode in ALPHA_MODES or transparent:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        image = image.convert("RGB")
    elif fmt == "PNG" and data[24:25] == b"\x10":
        # 16 bits per channel (IHDR bit depth): PIL decodes it to 8-bit RGB, the file is not.
        converted.append("RGB;16")
    if fmt not in KEPT_FORMATS:
        converted.append(f"format:{fmt}")
    return image, converted


def original_key(path: Path, base: Path) -> str:
    """How the index names a source file: relative to `base` (the folder holding the data root:
    the project, for the stages) when inside it, so the index, and its DVC hash, is the same in
    every checkout; absolute otherwise."""
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


class StoreIndex:
    """The store's index.parquet: from an original path, or a sha256, to the stored image."""

    def __init__(self, rows: list[dict[str, Any]], path: Path, base: Path):
        self.path, self.base = path, base
        self._by_original: dict[str, StoredImage] = {}
        self._by_sha: dict[str, StoredImage] = {}
        for row in rows:
            stored = StoredImage(sha256=row["sha256"], path=row["path"], width=row["width"],
                                 height=row["height"], converted=row["converted"])
            self._by_original.setdefault(row["original"], stored)
            self._by_sha.setdefault(row["sha256"], stored)

    def __len__(self) -> int:
        return len(self._by_original)

    def lookup(self, original: str | os.PathLike, where: str) -> StoredImage:
        resolved = Path(original).resolve()
        try:
            return self._by_original[original_key(resolved, self.base)]
        except KeyError:
            raise MissingImage(f"{where}: {resolved} is not in the image store {self.path}; "
                               f"{RUN_STORE}") from None

    def by_sha(self, sha256: str) -> StoredImage:
        try:
            return self._by_sha[sha256]
        except KeyError:
            raise MissingImage(f"image sha256 {sha256} is not in the image store {self.path}; "
                               f"{RUN_STORE}") from None


def read_index(data_root: str | os.PathLike, prefix: str = "store") -> StoreIndex:
    from mmloop.schema import read_samples

    path = Path(data_root) / prefix.strip("/") / INDEX_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: image store index not found; {RUN_STORE}")
    return StoreIndex(read_samples(path), path, Path(data_root).resolve().parent)
