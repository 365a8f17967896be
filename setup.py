"""Ships the top-level recipes/ folder inside the wheel as the package ``mrlite.recipes`` (single copy in the
repository; see pyproject.toml). Everything else is configured in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["mrlite*"]), "mrlite.recipes"],
    package_dir={"mrlite.recipes": "recipes"},
)
