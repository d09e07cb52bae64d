"""Does a launch through quiktool.runtime.cuda's cuLaunchKernelEx path (the one the cluster split-K kernels take) give
the kernel the cluster it asked for? A one-line kernel writes %cluster_nctarank and %cluster_ctarank per block; this
prints, per (PDL attribute, cluster size), the distinct (nctarank, ctarank) pairs seen (twenty-ninth session, issue 5).

    PYTHONPATH=$PWD python3 scripts/device_cluster_probe.py
"""
import cupy
import torch

from quiktool.runtime import cuda

SRC = r'''
extern "C" __global__ void probe(int* out) {
    unsigned n, r;
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(n));
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    if (threadIdx.x == 0) out[blockIdx.x] = (int)(n * 100 + r);
}
'''
dev = torch.cuda.current_device()
fn = cupy.RawKernel(SRC, "probe", options=("-arch=sm_90",))
fn.compile()
ptr = int(fn.kernel.ptr)
for pdl in (False, True):
    for cluster in (1, 2, 6, 8):
        grid = 24 * cluster
        out = torch.full((grid,), -1, dtype=torch.int32, device="cuda")
        ex = cuda._launch_ex(pdl, cluster) if pdl or cluster > 1 else None
        cuda._launch_fn(dev, ptr, "probe", grid, 32, 0, cuda._raw_stream(dev), cuda._PARAMS.pack("p", (out.data_ptr(),)), ex)
        torch.cuda.synchronize()
        seen = sorted(set(out.tolist()))
        print(f"pdl={pdl} cluster={cluster}: (nctarank*100 + ctarank) seen {seen[:10]}{' ...' if len(seen) > 10 else ''}")
