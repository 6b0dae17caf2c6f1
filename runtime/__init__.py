"""Loading and running artifacts (the TFLite interpreter, flatbuffer reading, per-op profiling)."""
