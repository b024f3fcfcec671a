"""Client side of the pipeline: publish segmentation requests (``SegmentationProducer``, ``segpipe-publish``)."""

from __future__ import annotations

from .publisher import IMAGE_EXTENSIONS, Delivery, Failure, PublishError, SegmentationProducer

__all__ = ["IMAGE_EXTENSIONS", "Delivery", "Failure", "PublishError", "SegmentationProducer"]
