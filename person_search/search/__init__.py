"""Gallery indexing and person search: index a folder of images or a video, query it with a person's box."""
from .index import (
    FAISS_MIN_BOXES,
    GalleryIndex,
    build_index,
    build_search_model,
    load_search_config,
    model_identity,
    remove_index,
)
from .query import draw_results, embed_query, search_person
from .sources import ImageFolderSource, SearchError, VideoSource, open_gallery_source

__all__ = [
    "FAISS_MIN_BOXES",
    "GalleryIndex",
    "ImageFolderSource",
    "SearchError",
    "VideoSource",
    "build_index",
    "build_search_model",
    "draw_results",
    "embed_query",
    "load_search_config",
    "model_identity",
    "open_gallery_source",
    "remove_index",
    "search_person",
]
