"""Small helpers shared by the CUHK-SYSU and PRW loaders: checked file access, MATLAB values, image headers."""
import os

import numpy as np
from PIL import Image
from scipy.io import loadmat

__all__ = [
    "LAYOUT_HINT", "require_path", "load_mat_variable", "mat_numbers", "mat_string", "mat_strings", "image_size"
]

LAYOUT_HINT = "see datasets/README.md for where to get the dataset and the expected folder layout"


def require_path(path, what):
    """Return ``path`` if it exists, else raise FileNotFoundError naming ``what`` and the exact path."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path} ({LAYOUT_HINT})")
    return path


def load_mat_variable(path, key, what):
    """Load variable ``key`` of the MATLAB file ``path`` with scipy's default nesting (no squeezing).

    The defaults are also the fastest options for the struct arrays of CUHK-SYSU (``squeeze_me`` and
    ``struct_as_record=False`` only add work per element; see datasets/README.md for timings).
    """
    require_path(path, what)
    try:
        variables = loadmat(path)
    except Exception as e:  # scipy raises ValueError, TypeError, OSError ... for damaged files
        raise ValueError(f"{path}: cannot read {what} as a MATLAB file ({type(e).__name__}: {e})") from e
    if key not in variables:
        found = sorted(k for k in variables if not k.startswith("__"))
        raise ValueError(f"{path}: expected MATLAB variable {key!r} in {what}, found {found}")
    return variables[key]


def mat_numbers(value, where):
    """A MATLAB numeric value as a float64 array, or a ValueError naming ``where`` if it is not finite numbers
    (a char or cell value where numbers belong, NaN or infinity)."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        kind = np.asarray(value).dtype
        raise ValueError(f"{where}: expected numbers, got a MATLAB value of type {kind}") from None
    if not np.isfinite(array).all():
        raise ValueError(f"{where}: expected finite numbers, got {array.reshape(-1).tolist()[:8]}")
    return array


def mat_string(value, where):
    """The Python string held by a MATLAB char value as loadmat returns it (e.g. ``array(['s1.jpg'])``).

    ``where`` describes the value's location for the error raised when it is not a single string.
    """
    array = np.asarray(value)
    while array.dtype == object and array.size == 1:
        array = np.asarray(array.reshape(-1)[0])
    if array.dtype.kind != "U" or array.size != 1:
        raise ValueError(f"{where}: expected a MATLAB string, got {array.dtype} array of shape {array.shape}")
    return str(array.reshape(-1)[0])


def mat_strings(cell, where):
    """The strings of a MATLAB cell array of strings (any shape, column-major order is irrelevant for vectors)."""
    return [mat_string(item, f"{where}, entry {i}") for i, item in enumerate(np.asarray(cell).reshape(-1))]


def image_size(path):
    """(height, width) of the image at ``path``, read from its header only (the pixels are not decoded)."""
    require_path(path, "image")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError for bad headers
        raise ValueError(f"{path}: cannot read the image header ({type(e).__name__}: {e})") from e
    return height, width
