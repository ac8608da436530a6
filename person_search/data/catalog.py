"""Registering a dataset name in detectron2's catalogs, replacing an earlier registration of the same name."""
import logging

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["register_dataset"]

logger = logging.getLogger(__name__)


def register_dataset(name, loader, **metadata):
    """``DatasetCatalog.register(name, loader)`` and ``MetadataCatalog.get(name).set(**metadata)``.

    detectron2 refuses a name that is registered already. Importing ``person_search`` registers the builtin names
    under ``$DETECTRON2_DATASETS``, so calling a ``register_*`` function again (e.g. with another root) replaces
    that registration, metadata included, and logs it.
    """
    if name in DatasetCatalog.list():
        logger.info(f"Replacing the registration of dataset '{name}'")
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)
