"""mmloop: a closed-loop data engine for vision-language models."""

__version__ = "0.1.0"
