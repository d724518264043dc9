"""Row-level failures: a row that cannot be processed becomes a row of ``errors/``, not a crash."""

from __future__ import annotations

from clipbeam.transforms.redact import redact

__all__ = ["ERROR_TYPES", "RowError"]

# Every error_type a job writes, with what it means.
ERROR_TYPES: dict[str, str] = {
    "missing_image": "no image: a null cell, an empty struct, or a path/URL that does not exist",
    "empty_image": "the image has zero bytes",
    "corrupt_image": "the bytes are not an image any installed decoder can read",
    "not_an_image": "the bytes are another kind of file: an HTML page, SVG, PDF, text...",
    "image_too_large": "the image exceeds --max-image-bytes or --max-image-pixels",
    "image_too_complex": "the image has more scans, chunks or blocks than decoding one may cost",
    "unreadable_image": "reading the image path or URL failed (permissions, timeout, network)",
    "url_not_allowed": "the image location's scheme is not in --allowed-url-schemes",
    "null_text": "the caption is null",
    "text_too_long": "the caption has more than --max-text-chars characters",
    "invalid_value": "a cell holds a value the job cannot use (wrong type, invalid UTF-8)",
    "corrupt_input": "the row's Parquet row group cannot be read (a corrupt data page): every "
    "row of that row group is reported, with its file and row number",
}


class RowError(Exception):
    """One row could not be processed.

    Attributes:
        error_type: a key of :data:`ERROR_TYPES`, stored in the ``error_type`` column.
        message: what went wrong, stored in the ``error_message`` column, with credentials in
            URLs redacted (see :func:`clipbeam.transforms.redact.redact`): messages quote the paths
            and URLs found in the data, and error rows are read by more people than the data's
            owner.
    """

    def __init__(self, error_type: str, message: str):
        if error_type not in ERROR_TYPES:
            raise ValueError(
                f"unknown error_type {error_type!r}; expected one of {list(ERROR_TYPES)}"
            )
        message = redact(message)
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message

    def __reduce__(self):  # keep both fields when Beam pickles the exception
        return (type(self), (self.error_type, self.message))
