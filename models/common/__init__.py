"""Building blocks shared by more than one model family: item content encoders and their cache."""

from models.common.content import ContentVectors, load_content_vectors

__all__ = ["ContentVectors", "load_content_vectors"]
