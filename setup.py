"""edgesched: an inference runtime for NVIDIA Jetson (several DNNs, one GPU, one process)."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = next(line.split('"')[1] for line in
               (HERE / "edgesched" / "version.py").read_text().splitlines()
               if line.startswith("__version__"))


def shared(folder: str, pattern: str) -> tuple[str, list[str]]:
    """Ship examples and configs under <prefix>/share/edgesched/ with the same layout as the
    repository, so configs/default.yaml's relative model paths work installed too."""
    return (f"share/edgesched/{folder}", sorted(str(p) for p in (HERE / folder).glob(pattern)))


setup(
    name="edgesched",
    version=VERSION,
    description="Interference-aware multi-DNN inference runtime for NVIDIA Jetson",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["edgesched", "edgesched.*"]),
    # the probe kernels' CUDA C sources, compiled at run time with NVRTC
    package_data={"edgesched.backends.tensorrt.probes": ["*.cu"]},
    # prometheus_client: /metrics (`serve --metrics`); small, pure Python, no dependencies of
    # its own, so a core dependency rather than an extra a Jetson install could miss.
    install_requires=["numpy>=1.22", "pyyaml>=5.4", "pyzmq>=23", "msgpack>=1.0", "onnx>=1.14",
                      "prometheus_client>=0.17"],
    extras_require={
        "cpu": ["onnxruntime>=1.16"],
        "jetson": ["pycuda>=2022.2", "jetson-stats>=4.2"],
        "plot": ["matplotlib>=3.5"],
        # libnvrtc alone (called through ctypes): compiles the probe kernels, no GPU needed; CI
        # installs it. No cuda-bindings here: its wheel imports `cuda` in every Python process.
        "nvrtc": ["nvidia-cuda-nvrtc-cu12"],
        # cuda-python's driver API as well: `selftest --cuda` and probes during calibration.
        # On a Jetson, JetPack's CUDA provides libnvrtc already.
        "cuda": ["cuda-bindings<13", "nvidia-cuda-nvrtc-cu12"],
        "test": ["pytest>=7.4", "hypothesis>=6.80", "onnxruntime>=1.16"],
    },
    entry_points={"console_scripts": ["edgesched=edgesched.commands.cli:main"]},
    data_files=[shared("configs", "*.yaml"), shared("engines/examples", "*.onnx"),
                shared("engines/examples/convnet_sliced", "*")],
    classifiers=["Programming Language :: Python :: 3.10", "Operating System :: POSIX :: Linux"],
)
