"""cxrgen: generate chest X-rays from radiology report text, train such models, and measure them."""

__version__ = "0.1.0"
