"""The explorer's defaults and limits, in a module of their own: the command line's parser reads them
without loading the model side (and torch)."""

from __future__ import annotations

__all__ = ["DEFAULT_PORT", "DEFAULT_MAX_UPLOAD", "UPLOAD_FORMATS", "MAX_UPLOAD_PIXELS", "DEFAULT_EXPORT_IMAGES"]

DEFAULT_PORT = 8765
#: Largest upload in bytes (the command's ``--max-upload-mb``).
DEFAULT_MAX_UPLOAD = 8 * 1024 * 1024
#: The image formats an upload may be in (Pillow's names); anything else is refused before decoding.
UPLOAD_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
#: The largest upload in pixels (width x height), checked on the header before any pixel is decoded.
MAX_UPLOAD_PIXELS = 4096 * 4096
#: Inputs an ``--export`` precomputes.
DEFAULT_EXPORT_IMAGES = 8
