"""device_bench: per-op latency lookup tables (LUTs) measured on real targets (host LiteRT, Android over adb,
Core ML on macOS), phone profiles predicted from published tables, whole-model benchmarks and LUT accuracy against
whole networks.

Stages hand each other files: this one writes luts/<device>.json in the format of `model.latency`."""
