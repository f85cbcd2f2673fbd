"""Jinja templates of the Triton kernels (the code-generation stage; not built yet)."""
