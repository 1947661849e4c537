"""awf-kernel: a Jupyter kernel sandboxed in Docker whose only way out is a domain-filtering proxy."""

__version__ = "0.1.0"
