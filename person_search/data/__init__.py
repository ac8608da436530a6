"""Person-search datasets (CUHK-SYSU, PRW), their registration in detectron2's catalogs, and the dataset mapper.

Importing this package registers ``cuhk_sysu_{train,gallery,query}`` and ``prw_{train,gallery,query}`` under
``$DETECTRON2_DATASETS`` (default ``datasets``); see datasets/README.md.
"""
from .builtin import register_cuhk_sysu, register_person_search_datasets, register_prw
from .cuhk_sysu import cuhk_sysu_num_labeled, cuhk_sysu_search_protocol, load_cuhk_sysu
from .image_io import read_image_file
from .mapper import ImageTooThinError, PersonSearchDatasetMapper
from .prw import load_prw, prw_num_labeled
from .reid_datasets import (
    extract_cuhk03_images,
    load_cuhk03,
    load_cuhk03_classic,
    load_dukemtmc,
    load_market1501,
    register_reid_datasets,
    register_reid_splits,
)
from .reid_mapper import ReIDCropMapper

__all__ = [
    "ImageTooThinError",
    "PersonSearchDatasetMapper",
    "ReIDCropMapper",
    "extract_cuhk03_images",
    "load_cuhk03",
    "load_cuhk03_classic",
    "load_dukemtmc",
    "load_market1501",
    "read_image_file",
    "register_reid_datasets",
    "register_reid_splits",
    "cuhk_sysu_num_labeled",
    "cuhk_sysu_search_protocol",
    "load_cuhk_sysu",
    "load_prw",
    "prw_num_labeled",
    "register_cuhk_sysu",
    "register_person_search_datasets",
    "register_prw",
]

register_person_search_datasets()
register_reid_datasets()
