"""The CPU anonymizer: label map in, anonymized frame out (adaptive or global mode)."""
# (filled in by the anonymizer work; interface fixed here)
