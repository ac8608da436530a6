from setuptools import find_packages, setup

setup(
    name="person_search",
    version="0.1.0",
    description="Joint detection and identification (OIM) person search as a detectron2 plugin",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # configs/ is installed as person_search/configs too (the demo's config, for `pip install .`)
    packages=find_packages(include=["person_search", "person_search.*"]) + ["person_search.configs"],
    package_dir={"person_search.configs": "configs"},
    package_data={"person_search.configs": ["*.yaml", "*/*.yaml"]},
    # torch, torchvision and detectron2 are deliberately not listed: users bring their own builds
    # (see README.md and tools/install_detectron2.py).
    install_requires=[line.split("#")[0].strip() for line in open("requirements.txt") if line.split("#")[0].strip()],
    entry_points={"console_scripts": ["person-search = person_search.cli:main"]},
)
