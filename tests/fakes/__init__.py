"""Fakes for unit tests only (e.g. a fake ``tensorrt`` module: TensorRT cannot be installed here)."""


def install_gpu_fakes(monkeypatch: object) -> None:
    """Put the fake ``tensorrt`` and ``pycuda.driver`` into ``sys.modules`` (reset first)."""
    import sys
    import types

    from tests.fakes import pycuda_driver, tensorrt

    tensorrt.reset()
    pycuda_driver.reset()
    package = types.ModuleType("pycuda")
    package.driver = pycuda_driver  # type: ignore[attr-defined]
    for name, module in (
        ("tensorrt", tensorrt),
        ("pycuda", package),
        ("pycuda.driver", pycuda_driver),
    ):
        monkeypatch.setitem(sys.modules, name, module)  # type: ignore[attr-defined]
