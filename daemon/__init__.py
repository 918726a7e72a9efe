"""Privacy gateway for video: segment every pixel, blur sensitive objects with object-sized Gaussians."""

__version__ = "0.1.0"
