"""GPU backend: TensorRT engines and CuPy kernels (kernels.cu); imports cupy/tensorrt lazily."""
