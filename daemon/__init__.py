"""Privacy gateway for video: segment every pixel, blur sensitive objects per their size."""

__version__ = "0.1.0"
