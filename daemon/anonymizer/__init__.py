"""The anonymizer: objects and kernels from a label map, then the paper's mask-symmetric blur."""
