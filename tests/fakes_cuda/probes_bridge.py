"""The probe fakes (tests/fakes_cuda_probes: cuda-python driver + NVRTC, virtual timeline) beside
the TensorRT fakes (this package) as ONE device, for calibrating on the TensorRT backend.

The backend retains and pushes the primary context through pycuda (the TensorRT fake); its
probe kernels go through cuda-python's driver (the probe fake). On a real GPU both reach the
same primary context, so here the probe fake sees its context current exactly where the
TensorRT fake has the primary context pushed, and retained exactly while the TensorRT fake
holds a retain: a probe call from a thread without the backend's context is a `context`
violation, and a retain of its own a `retain` one. While probe chunks are queued (on the
probe fake's timeline: not yet waited for), every TensorRT execute lasts longer, by
`weights[kind]` per unit of the running probe's SM fraction, so probe co-runs show.
"""
from __future__ import annotations

from edgesched.backends.tensorrt import probing
from tests import fakes_cuda_probes
from tests.fakes_cuda.gpu import PRIMARY_HANDLE
from tests.fakes_cuda.gpu import FakeGpu as TrtGpu
from tests.fakes_cuda_probes.gpu import FakeGpu as ProbeGpu

WEIGHTS = {"compute": 0.8, "memory": 0.3}


class SharedContextGpu(ProbeGpu):
    def __init__(self, trt_gpu: TrtGpu, spec=None):
        self._trt = trt_gpu
        super().__init__(spec)

    @property
    def retains(self) -> int:
        return self._trt.retains

    @retains.setter
    def retains(self, value: int) -> None:
        if value:      # only __init__'s 0 is expected: the backend retains through pycuda
            self.violate("retain", "the probes retained the primary context themselves")

    def current(self) -> int:
        return self.context if self._trt.current() == PRIMARY_HANDLE else 0

    def slowdown(self) -> float:
        running = [k for k in self.kernels if k.end > self.now]
        factor = 1.0
        for kind, weight in WEIGHTS.items():
            sizes = [min(1.0, k.sm_fraction) for k in running if k.kind == kind]
            factor += weight * max(sizes, default=0.0)
        return factor


def install_probes(monkeypatch, trt_gpu: TrtGpu) -> fakes_cuda_probes.FakeCudaProbes:
    gpu = SharedContextGpu(trt_gpu)
    fake = fakes_cuda_probes.FakeCudaProbes(gpu, fakes_cuda_probes.make_driver(gpu),
                                            fakes_cuda_probes.make_nvrtc(gpu.violations))
    monkeypatch.setattr(probing, "_modules", lambda: (fake.driver, fake.nvrtc))
    trt_gpu.slowdown = gpu.slowdown
    return fake
