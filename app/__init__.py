"""imagegate: a self-hosted, OpenAI-compatible gateway for image editing."""

__version__ = "0.1.0"
