"""Reading picture files as the person in front of the screen sees them, for training, evaluation and search."""
import logging

import numpy as np
from detectron2.data import detection_utils as utils
from PIL import Image, ImageOps

__all__ = ["read_image_file"]

logger = logging.getLogger(__name__)

# PIL modes of 16-bit integer pictures (PNG, TIFF; older Pillow opens 16-bit PNGs as "I"), scaled 0..65535 -> 0..255.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def read_image_file(path, image_format="BGR"):
    """The picture in ``path`` as a viewer shows it, as an HxWxC uint8 array in ``image_format``.

    detectron2's ``read_image`` with two differences that matter for other files than the benchmarks' JPEGs (for
    those the arrays are identical): EXIF orientation is applied after loading, so a TIFF, which Pillow turns
    upright while loading, is not turned a second time; 16-bit integer pictures are scaled to 8 bits instead of
    clipped (which made them almost white). Raises what PIL raises for a file it cannot read.
    """
    with Image.open(path) as image:
        image.load()
        try:
            image = ImageOps.exif_transpose(image)
        except Exception as e:  # a damaged EXIF block: the picture as stored (detectron2's reader does the same)
            logger.debug(f"{path}: EXIF orientation not applied ({e})")
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    return utils.convert_PIL_to_numpy(image, image_format)
