"""genrec: generative recommendation with learnable item tokenization."""

from genrec.version import __version__

__all__ = ["__version__"]
