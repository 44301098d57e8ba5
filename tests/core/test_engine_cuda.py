"""The engine on a GPU: every GPU backend against the float64 reference (skipped without a GPU)."""

import pytest
import torch

import igcam_fast
from igcam_fast import ops
from igcam_fast.core import reference as R

from test_engine import rel_err, small_cnn

pytestmark = pytest.mark.needs_cuda


def _gpu_backends():
    names = []
    for name in ("cuda", "triton", "torch"):
        if name in ops.backend_names() and not ops.get_backend(name).reasons(torch.device("cuda"), [torch.float32]):
            names.append(name)
    return names


@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
@pytest.mark.parametrize("pool,rule,steps", [("avg", "gausslegendre", 7), ("max", "right", 5)])
def test_engine_on_gpu_matches_reference(backend, pool, rule, steps):
    if backend not in _gpu_backends():
        pytest.skip(f"backend {backend} cannot run here: "
                    f"{ops.get_backend(backend).reasons(torch.device('cuda'), [torch.float32])}")
    net = small_cnn(pool=pool)
    x = torch.randn(3, 3, 17, 13)
    targets = [0, 2, 4]
    black = (0 - torch.tensor(igcam_fast.IMAGENET_MEAN, dtype=torch.float64)) / torch.tensor(
        igcam_fast.IMAGENET_STD, dtype=torch.float64)
    ref = R.reference_integrated_gradcam(net.double(), x.double(), net[3], targets, steps=steps, rule=rule,
                                         baseline=black[:, None, None].expand(3, 17, 13), output_size=(17, 13))
    net = net.float().cuda()
    ours = igcam_fast.integrated_gradcam(net, x.cuda(), "3", targets, steps=steps, rule=rule, backend=backend,
                                         batch_rows=4)
    assert ours.is_cuda
    # TF32 convolutions on Hopper keep about 3 decimal digits.
    assert rel_err(ours.cpu(), ref) < 5e-3


@pytest.mark.parametrize("method,reference", [("gradcam", R.reference_gradcam), ("gradcampp", R.reference_gradcampp)])
def test_gradcam_variants_on_gpu(method, reference):
    net = small_cnn(pool="max")
    x = torch.randn(2, 3, 15, 15)
    ref = reference(net.double(), x.double(), net[3], [1, 3], output_size=(15, 15))
    ours = getattr(igcam_fast, method)(net.float().cuda(), x.cuda(), "3", [1, 3])
    assert rel_err(ours.cpu(), ref) < 5e-3


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-2), (torch.bfloat16, 6e-2)])
def test_autocast_on_gpu_stays_close(dtype, tol):
    net = small_cnn().cuda()
    x = torch.randn(2, 3, 32, 32, device="cuda")
    full = igcam_fast.integrated_gradcam(net, x, "3", [0, 1])
    low = igcam_fast.integrated_gradcam(net, x, "3", [0, 1], autocast=dtype)
    assert low.dtype == torch.float32
    assert rel_err(low, full) < tol


def test_no_gpu_memory_is_left_behind():
    net = small_cnn().cuda()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    igcam_fast.integrated_gradcam(net, x, "3", [0, 1, 2, 3])
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(3):
        maps = igcam_fast.integrated_gradcam(net, x, "3", [0, 1, 2, 3])
    del maps
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= before
