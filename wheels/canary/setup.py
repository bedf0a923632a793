"""Only the extension lives here; metadata is in pyproject.toml."""

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

setup(
    ext_modules=[CUDAExtension("canary._C", ["csrc/binding.cpp", "csrc/saxpy.cu"])],
    cmdclass={"build_ext": BuildExtension},
)
