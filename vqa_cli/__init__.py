"""vqa: ask questions about videos and caption folders of them with local video-language models."""

__version__ = "0.1.0"
