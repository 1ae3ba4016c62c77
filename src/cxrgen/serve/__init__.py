"""The web demo (``cxrgen serve``): report text in, synthetic chest X-rays out, in a browser.

``core`` holds everything that does not need Gradio (request bounds, the labeler panel, the one
adapter to the pipeline, PNG/DICOM files) so it is testable without a browser; ``app`` builds the
Gradio page and is imported only by ``cxrgen serve`` (Gradio is the optional ``demo`` extra).
"""
