"""The one place that adapts detectron2 releases and today's Python stack to this plugin.

detectron2 0.6 (the release installable from the package index, see tools/install_detectron2.py) predates the
current stack. Three things break, each handled here and each a no-op where the stack is complete:

* ``detectron2._C`` (the compiled extension) may be missing. ``detectron2.layers`` imports it at import time,
  although the ops it provides (rotated boxes / NMS / ROIAlign, deformable convolution, the fast COCO eval) are
  not used by an upright-box Faster R-CNN. A stand-in module lets everything import; calling one of its ops
  raises :class:`MissingCompiledOpError` naming the op and how to get it.
* Pillow >= 10 removed ``Image.LINEAR`` (a default argument in ``detectron2.data.transforms``).
* setuptools >= 81 removed ``pkg_resources`` (``detectron2.model_zoo`` uses ``resource_filename``); a stand-in is
  visible only while that module is imported.

:func:`apply` must run before detectron2's submodules are imported; ``import person_search`` does it first.
"""
import importlib
import importlib.util
import sys
import types

__all__ = ["apply", "MissingCompiledOpError", "has_compiled_ops"]

_FIX_HINT = (
    "This detectron2 was installed without its compiled operators (detectron2._C), e.g. the pure-Python "
    "detectron2 0.6 that `make` installs from the package index. Upright-box Faster R-CNN person search does not "
    "need them. To use this op, install the official detectron2 from source: "
    "python -m pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'"
)


class MissingCompiledOpError(RuntimeError):
    """A compiled detectron2 op was called but detectron2._C is not installed."""


class _MissingCompiledOps(types.ModuleType):
    """Stand-in for ``detectron2._C``: importable, every attribute is an op that raises when called."""

    is_person_search_fallback = True

    # Build information that detectron2.utils.collect_env (run by default_setup) asks the extension for.
    @staticmethod
    def get_compiler_version():
        return "none: detectron2 installed without compiled ops (person_search.compat fallback)"

    @staticmethod
    def get_cuda_version():
        return "none: detectron2 installed without compiled ops"

    @staticmethod
    def has_cuda():
        return False

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing_op(*args, **kwargs):
            raise MissingCompiledOpError(f"detectron2._C.{name} is not available. {_FIX_HINT}")

        missing_op.__name__ = name
        return missing_op


def has_compiled_ops():
    """True if detectron2's real compiled extension is importable."""
    module = sys.modules.get("detectron2._C")
    if module is not None:
        return not getattr(module, "is_person_search_fallback", False)
    return importlib.util.find_spec("detectron2._C") is not None


def _install_missing_ops_fallback():
    if has_compiled_ops():
        return False
    import detectron2

    fallback = _MissingCompiledOps("detectron2._C", "fallback for detectron2's missing compiled ops")
    sys.modules["detectron2._C"] = fallback
    detectron2._C = fallback
    return True


def _patch_pillow():
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        # Pillow's LINEAR was an alias of BILINEAR before its removal in Pillow 10.
        Image.LINEAR = Image.BILINEAR
        return True
    return False


def _resource_filename(package, resource):
    import importlib.resources
    import os

    return os.path.join(str(importlib.resources.files(package)), resource)


def _patch_pkg_resources():
    """Import ``detectron2.model_zoo.model_zoo`` (its only user of ``pkg_resources``) with a stand-in that is
    removed right after: other code keeps finding ``pkg_resources`` missing, and its own fallbacks still work."""
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return False
    shim = types.ModuleType("pkg_resources", "person_search shim: resource_filename only (setuptools >= 81)")
    shim.resource_filename = _resource_filename
    sys.modules["pkg_resources"] = shim
    try:
        importlib.import_module("detectron2.model_zoo.model_zoo")
    finally:
        del sys.modules["pkg_resources"]
    return True


_applied = None


def apply():
    """Apply every adaptation needed by the installed stack. Idempotent.

    Returns a dict saying which adaptations were needed (all False on a complete detectron2 / old stack).
    """
    global _applied
    if importlib.util.find_spec("detectron2") is None:
        raise ImportError(
            f"person_search needs detectron2, which this Python ({sys.executable}) cannot import: run "
            "`python tools/install_detectron2.py` (a pure-Python detectron2 0.6 from the package index) or install "
            "the official detectron2 (README.md, 'Installing detectron2')"
        )
    if _applied is None:
        _applied = {
            "missing_compiled_ops": _install_missing_ops_fallback(),
            "pillow_linear": _patch_pillow(),
            "pkg_resources": _patch_pkg_resources(),
        }
    return dict(_applied)
