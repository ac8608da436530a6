"""Register the person-search datasets in detectron2's DatasetCatalog / MetadataCatalog.

As in detectron2's builtin datasets, the datasets live under ``$DETECTRON2_DATASETS`` (default ``datasets``):
``CUHK-SYSU/`` and ``PRW/`` (or ``PRW-v16.04.20/``). Registration only records paths; files are read when a
dataset is first requested (``DatasetCatalog.get``). ``num_labeled`` of a train set needs its identity file, so
it is added to the train metadata at that point (``cuhk_sysu_num_labeled`` / ``prw_num_labeled`` give it directly).
"""
import functools
import os

from detectron2.data import MetadataCatalog

from .catalog import register_dataset
from .cuhk_sysu import GALLERY_SIZES, cuhk_sysu_num_labeled, cuhk_sysu_search_protocol, load_cuhk_sysu
from .prw import load_prw, prw_num_labeled

__all__ = ["register_person_search_datasets", "register_cuhk_sysu", "register_prw"]

EVALUATOR_TYPE = "person_search"


def _load_train(name, root, loader, num_labeled):
    """Load a train split and record its number of labeled identities in the metadata."""
    dicts = loader(root, "train")
    MetadataCatalog.get(name).set(num_labeled=num_labeled(root))
    return dicts


def _register(prefix, dataset_root, loader, num_labeled, protocol=None):
    """Register ``<prefix>_{train,query,gallery}`` with ``protocol`` (default: the prefix) in the metadata."""
    protocol = protocol or prefix
    common = {"evaluator_type": EVALUATOR_TYPE, "thing_classes": ["person"], "dataset_root": dataset_root}
    train, query, gallery = f"{prefix}_train", f"{prefix}_query", f"{prefix}_gallery"
    register_dataset(train, functools.partial(_load_train, train, dataset_root, loader, num_labeled), **common)
    register_dataset(query, functools.partial(loader, dataset_root, "query"), protocol=protocol, **common)
    register_dataset(
        gallery, functools.partial(loader, dataset_root, "gallery"), protocol=protocol, query_dataset=query, **common
    )


def register_cuhk_sysu(root, prefix="cuhk_sysu", folder="CUHK-SYSU"):
    """Register <prefix>_{train,gallery,query} for a CUHK-SYSU-format folder ``<root>/<folder>``."""
    dataset_root = os.path.join(root, folder)
    _register(prefix, dataset_root, load_cuhk_sysu, cuhk_sysu_num_labeled, protocol="cuhk_sysu")
    MetadataCatalog.get(f"{prefix}_gallery").set(
        gallery_sizes=GALLERY_SIZES, search_protocol=functools.partial(cuhk_sysu_search_protocol, dataset_root)
    )


def register_prw(root, prefix="prw", folder="PRW"):
    """Register <prefix>_{train,gallery,query} for ``<root>/<folder>`` (PRW: ``PRW-v16.04.20`` if only that
    exists)."""
    _register(prefix, os.path.join(root, folder), load_prw, prw_num_labeled, protocol="prw")


def register_person_search_datasets(root=None):
    """Register the CUHK-SYSU and PRW splits with data under ``root``. Nothing is read from disk here.

    Importing ``person_search`` calls this with the default root; calling it again re-registers the same names
    under another root.

    ``root`` defaults to ``$DETECTRON2_DATASETS`` or ``datasets``, as for detectron2's builtin datasets.
    """
    if root is None:
        root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    register_cuhk_sysu(root)
    register_prw(root)
    # Synthetic sets written by datasets/prepare_synthetic.py --output <root>/synthetic/{CUHK-SYSU,PRW}
    # (the demo and the synthetic configs use them; same formats and protocols as the real datasets).
    register_cuhk_sysu(root, prefix="synthetic_cuhk_sysu", folder=os.path.join("synthetic", "CUHK-SYSU"))
    register_prw(root, prefix="synthetic_prw", folder=os.path.join("synthetic", "PRW"))
