"""Typed failures of the segmentation core.

Every error a request can cause carries a stable ``code`` so the worker can publish it in the error result and
the dead-letter record without parsing messages. Codes are part of the wire contract: add, never rename.
"""

from __future__ import annotations


class SegmentationError(Exception):
    """Base class: a request that cannot be segmented, with a machine-readable code."""

    code = "segmentation_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImageError(SegmentationError):
    """The payload is not a decodable image (empty, truncated, corrupt, unsupported, pickled numpy...)."""

    code = "invalid_image"


class ImageTooLargeError(InvalidImageError):
    """The image (or its compressed payload) exceeds the configured limits: refuse before allocating it."""

    code = "image_too_large"


class InvalidPromptError(SegmentationError):
    """Points, labels or boxes are malformed, non-finite or outside the image."""

    code = "invalid_prompt"


class InvalidParametersError(SegmentationError):
    """A per-request parameter is unknown or out of range (e.g. an unknown model name)."""

    code = "invalid_parameters"


class ModelUnavailableError(SegmentationError):
    """A model's checkpoint is missing or cannot be loaded."""

    code = "model_unavailable"


class ModelFailedError(SegmentationError):
    """Every model allowed for the request failed while running."""

    code = "model_failed"


class MalformedRequestError(SegmentationError):
    """The request message itself cannot be read (bad Avro, bad headers, wrong field types)."""

    code = "malformed_request"
