"""Native extensions only; all package metadata lives in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

# Compiled module -> Cython source. Add a row here to build another kernel.
NATIVE_MODULES = {
    "streamd.kernels._zeroscan_c": "_native/zeroscan.pyx",
    "streamd.kernels._qcow2_c": "_native/qcow2.pyx",
}
# Declarations every kernel cimports (byte input checks): found here, shipped in the sdist by MANIFEST.in.
SHARED_DECLARATIONS = ["_native/bytebuffer.pxd"]

setup(
    ext_modules=cythonize(
        [
            Extension(module, [source], depends=SHARED_DECLARATIONS, extra_compile_args=["-O3"])
            for module, source in NATIVE_MODULES.items()
        ],
        include_path=["_native"],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
        },
    ),
)
