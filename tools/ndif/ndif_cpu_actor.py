"""NDIF's model actor on a machine without a GPU (make ndif-check only; installed into the NDIF venv).

NDIF 0.1.2 places a model on the GPUs the controller assigns it (`gpu_mem_bytes_by_id`), loads
it with `device=<gpu>`, checks every tensor sits on CUDA, and synchronizes CUDA after loading
and after each request. Every other CUDA call it makes (memory caps, peak-memory metering)
loops over that assignment. So this subclass, chosen per deployment through NDIF's own
`actor_class` setting, changes three things and nothing else:

1. it drops the GPU assignment, so those loops have nothing to do;
2. it loads the model on the CPU (no placement check: there is no GPU to be on);
3. its per-request cleanup skips `torch.cuda.synchronize()`.

The request path itself (deserialize, run the user's block, upload the result) is NDIF's.
"""
from __future__ import annotations

import gc
import time

import ray
from nnsight.modeling.huggingface import HuggingFaceModel

from ndif.services.ray.deployments.modeling.base import BaseModelDeployment


class CPUModelDeployment(BaseModelDeployment):
    # Parking HOT->WARM moves weights GPU->CPU; on a CPU there is nothing to park.
    CACHEABLE = False

    def __init__(self, model_key, execution_timeout=None, gpu_mem_bytes_by_id=None,
                 dtype="bfloat16", **kwargs):
        self.assigned_gpus = dict(gpu_mem_bytes_by_id or {})   # kept for the logs only
        super().__init__(model_key, execution_timeout, {}, dtype, **kwargs)

    def load_from_disk(self) -> HuggingFaceModel:
        started = time.time()
        model = HuggingFaceModel.from_model_key(self.model_key, dispatch=True, dtype=self.dtype_name,
                                                device="cpu", **self.kwargs)
        model._module.requires_grad_(False)
        print(f"ndif-check: loaded {self.model_key} on CPU ({self.dtype_name}) in "
              f"{time.time() - started:.1f} s; declared GPUs {sorted(self.assigned_gpus)} unused", flush=True)
        return model

    def cleanup(self) -> None:
        self.kill_switch.clear()
        self.kill_reason = None
        self.execution_ident = None
        self.model.interleaver.cancel()
        gc.collect()


CPUModelActor = ray.remote(num_cpus=1, max_restarts=-1)(CPUModelDeployment)


# NDIF_CHECK_SANDBOX=1: NDIF's sandboxed actor on the CPU. The public NDIF has authentication
# on, and an ordinary key's request is untrusted: its block runs in a runner process against a
# meta-device copy of the model, driven in lockstep with the real one. With authentication off
# (here) every request is trusted and skips the sandbox, so this actor marks each one untrusted,
# which is what an ordinary key gets.
from ndif.services.ray.sandbox.model import SandboxModelDeployment  # noqa: E402


class CPUSandboxDeployment(SandboxModelDeployment, CPUModelDeployment):
    def execute(self, request):
        request.trusted = False
        return super().execute(request)


CPUSandboxActor = ray.remote(num_cpus=1, max_restarts=-1)(CPUSandboxDeployment)
