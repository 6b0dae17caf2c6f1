"""The end-to-end demo on the bundled data: `python -m demo` / `make demo`."""
