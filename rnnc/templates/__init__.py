"""Jinja templates of the Triton kernels and the code that renders them (scan, sequential, chunked)."""
