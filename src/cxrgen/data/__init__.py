"""Data layer: readers, report text, the labeler, image I/O, splits and the manifest table."""
