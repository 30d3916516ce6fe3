"""Package discovery for the split layout: patterns/, kernels/ and models/ sit at the top of the
repository but install as fusegraph.patterns, fusegraph.kernels and fusegraph.models."""
from setuptools import find_packages, setup

SUBPACKAGES = {"fusegraph.patterns": "patterns", "fusegraph.kernels": "kernels", "fusegraph.models": "models"}

packages = find_packages(include=["fusegraph", "fusegraph.*"])
package_dir = {"fusegraph": "fusegraph"}
for name, folder in SUBPACKAGES.items():
    package_dir[name] = folder
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(where=folder)]

setup(packages=packages, package_dir=package_dir, package_data={"fusegraph.kernels": ["**/*.cu", "**/*.cuh"]})
