"""person_search.compat on the pure-Python detectron2 (fallbacks active) and on a complete stack (no-op)."""
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from person_search import compat


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_detectron2_imports_and_model_zoo_configs_resolve():
    import detectron2.data.transforms  # noqa: F401  (needs Pillow's Image.LINEAR)
    import detectron2.modeling  # noqa: F401  (imports detectron2._C at import time)
    from detectron2 import model_zoo

    assert model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml").endswith(".yaml")


@pytest.mark.skipif(compat.has_compiled_ops(), reason="detectron2 has its compiled ops here")
def test_missing_compiled_op_raises_a_clear_error():
    from detectron2 import _C

    with pytest.raises(compat.MissingCompiledOpError) as info:
        _C.nms_rotated(None, None, 0.5)
    message = str(info.value)
    assert "detectron2._C.nms_rotated" in message and "install the official detectron2" in message


def test_apply_is_a_no_op_on_a_complete_stack():
    # A real extension module, a Pillow with Image.LINEAR and an existing pkg_resources: nothing to adapt.
    out = run_python(
        "import sys, types\n"
        "sys.modules['detectron2._C'] = types.ModuleType('detectron2._C')\n"
        "sys.modules['pkg_resources'] = types.ModuleType('pkg_resources')\n"
        "from PIL import Image\n"
        "Image.LINEAR = Image.BILINEAR\n"
        "import person_search.compat as c\n"
        "print(sorted(k for k, v in c.apply().items() if v))\n"
        "import detectron2\n"
        "print(type(detectron2._C).__name__ if hasattr(detectron2, '_C') else 'untouched')\n"
    )
    assert out.splitlines() == ["[]", "untouched"]


def test_pkg_resources_stand_in_is_not_left_behind():
    # code that probes for pkg_resources (pytest, debuggers, namespace packages) must not find a partial module
    out = run_python(
        "import importlib.util, sys\n"
        "had = importlib.util.find_spec('pkg_resources') is not None\n"
        "import person_search\n"
        "from detectron2 import model_zoo\n"
        "model_zoo.get_config_file('COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml')\n"
        "print(had, 'pkg_resources' in sys.modules)\n"
    )
    had, present = out.splitlines()[-1].split()
    assert present == had  # present only if setuptools itself provides it


def test_missing_detectron2_is_named_with_the_fix(tmp_path):
    # -S: no site-packages, so no detectron2 (the check comes before anything else is imported)
    result = subprocess.run([sys.executable, "-S", "-c", "import person_search"], capture_output=True, text=True,
                            cwd=tmp_path, env={"PYTHONPATH": REPO_ROOT})
    assert result.returncode == 1
    assert "person_search needs detectron2" in result.stderr and "tools/install_detectron2.py" in result.stderr


def test_apply_is_idempotent():
    assert compat.apply() == compat.apply()
