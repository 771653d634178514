"""Images of a data set: reading them from the forms a column takes, and the image store.

* :func:`image_bytes` - encoded bytes from raw bytes, a ``datasets`` image dict, a PIL image, a
  ``"base64:..."`` string or a file path;
* :class:`ImageStore` - a folder of images named by content (``<sha256[:24]><ext>``,
  deduplicated) or by recipe (:meth:`ImageStore.ensure`), with a ``manifest.json`` of SHA-256
  hashes so that a rebuild reuses intact files. ``pal-mm convert`` and every builder in
  ``data_scripts/`` store images through it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

from encoders.atomic import write_bytes, write_json

from .errors import DataError
from .ingest import first_line, shown

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


# ------------------------------------------------------------------------------------------
def image_bytes(value: Any, base_dir: str | os.PathLike | None = None) -> bytes:
    """Encoded image bytes from the forms an image column takes: raw ``bytes``, a ``datasets``
    image dict (``{"bytes", "path"}``), a PIL image (encoded as PNG), a ``"base64:..."`` string or
    a file path (relative to ``base_dir``). Raises :class:`DataError` without a location."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        if isinstance(value.get("bytes"), (bytes, bytearray, memoryview)) and value["bytes"]:
            return bytes(value["bytes"])
        if value.get("path"):
            return image_bytes(value["path"], base_dir)
        raise DataError("image dict has neither 'bytes' nor 'path'")
    if isinstance(value, str) and value.startswith("base64:"):
        try:
            return base64.b64decode(value[len("base64:"):], validate=True)
        except (binascii.Error, ValueError):
            raise DataError("invalid base64 image data") from None
    if isinstance(value, (str, os.PathLike)):
        path = Path(value).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"image file not found: {shown(str(path))}") from None
        except (OSError, ValueError) as e:  # a directory, a name too long, a NUL byte
            raise DataError(f"cannot read image file {shown(str(path))} ({first_line(e)})") from None
    if hasattr(value, "save"):  # PIL image
        buf = io.BytesIO()
        value.convert("RGB").save(buf, format="PNG")
        return buf.getvalue()
    raise DataError(f"cannot read an image from a {type(value).__name__}")


def image_suffix(data: bytes) -> str | None:
    """``.jpg`` / ``.png`` / ``.webp`` / ``.gif`` / ``.bmp`` from the magic bytes, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    if data[:2] == b"BM":
        return ".bmp"
    return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ImageStore:
    """A folder of images plus ``manifest.json`` (file name -> SHA-256).

    :meth:`put_bytes` stores encoded bytes under a content-hash name ``<sha256[:24]><ext>``
    (deduplicated; bytes that PIL cannot open are refused). :meth:`ensure` creates a
    recipe-named image only when the file is missing or does not match its recorded hash, so a
    rebuild costs a hash check per file. Call :meth:`save_manifest` at the end of a build
    (without it the folder holds only images)."""

    MANIFEST = "manifest.json"

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.manifest: dict[str, str] = {}
        mpath = self.directory / self.MANIFEST
        if mpath.is_file():
            try:
                loaded = json.loads(mpath.read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    self.manifest = {str(k): str(v) for k, v in loaded.items()}
            except (OSError, ValueError):
                pass  # an unreadable manifest: every file is checked and remade
        self._verified: set[str] = set()
        self.created = 0
        self.reused = 0

    def path(self, name: str) -> Path:
        return self.directory / name

    def _is_intact(self, name: str) -> bool:
        if name in self._verified:
            return True
        path = self.directory / name
        ok = name in self.manifest and path.is_file() and _sha256_file(path) == self.manifest[name]
        if ok:
            self._verified.add(name)
        return ok

    def ensure(self, name: str, make: Callable[[], bytes]) -> str:
        """Make sure ``name`` exists and is intact, writing ``make()`` (encoded bytes) only if not."""
        if self._is_intact(name):
            self.reused += 1
            return name
        data = make()
        write_bytes(self.directory / name, data)
        self.manifest[name] = _sha256(data)
        self._verified.add(name)
        self.created += 1
        return name

    def put_bytes(self, data: bytes, where: str = "image") -> str:
        """Store encoded image bytes under ``<sha256[:24]><ext>``; PIL-readable bytes of another
        format are re-encoded as PNG. Returns the file name; unreadable bytes raise
        :class:`DataError` prefixed with ``where``."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                ext = image_suffix(data)
                if ext is None:
                    buf = io.BytesIO()
                    im.convert("RGB").save(buf, format="PNG", compress_level=1)
                    data, ext = buf.getvalue(), ".png"
        except Exception as e:  # PIL raises many types on hostile bytes
            raise DataError(f"{where}: not a readable image ({type(e).__name__})") from None
        digest = _sha256(data)
        name = digest[:24] + ext
        if name in self._verified or (self.manifest.get(name) == digest and (self.directory / name).is_file()):
            self._verified.add(name)
            self.reused += 1
            return name
        write_bytes(self.directory / name, data)
        self.manifest[name] = digest
        self._verified.add(name)
        self.created += 1
        return name

    def prune(self, keep: set[str]) -> int:
        """Delete the images in the manifest that are not in ``keep``; returns how many."""
        removed = 0
        for name in sorted(set(self.manifest) - set(keep)):
            (self.directory / name).unlink(missing_ok=True)
            del self.manifest[name]
            self._verified.discard(name)
            removed += 1
        return removed

    def save_manifest(self) -> None:
        write_json(self.directory / self.MANIFEST, dict(sorted(self.manifest.items())), indent=0)

