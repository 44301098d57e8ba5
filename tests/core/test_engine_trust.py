"""The engine under misuse and faults: a right map or an error that names the problem, never a
stale, NaN or silently different map, and the model left as it was."""

import gc
import threading

import pytest
import torch
from torch import nn

import igcam_fast
from igcam_fast.core.baseline import clear_baseline_features
from igcam_fast.core.engine import CamEngine
from test_engine import rel_err, small_cnn


def _fresh(net, x, targets, **options):
    """The map of an engine that cannot have seen the model before."""
    clear_baseline_features(net)
    return igcam_fast.integrated_gradcam(net, x, "3", targets, **options)


# ---- stale baseline features ---------------------------------------------------------------------------


def _scale_data(net):
    net[0].weight.data.mul_(1.7)


def _vector_to_parameters(net):
    vec = torch.nn.utils.parameters_to_vector(net.parameters())
    torch.nn.utils.vector_to_parameters(vec * 0.8 + 0.01, net.parameters())


def _swap_submodule(net):
    torch.manual_seed(5)
    net[0] = nn.Conv2d(3, 8, 3, padding=1)


def _batchnorm_data(net):
    net[1].running_var.data.mul_(3.0)


def _ema_through_data(net):
    for p in net.parameters():
        p.data.mul_(0.9).add_(0.1 * torch.ones_like(p))


@pytest.mark.parametrize("change", [_scale_data, _vector_to_parameters, _swap_submodule, _batchnorm_data,
                                    _ema_through_data])
def test_baseline_features_follow_every_kind_of_weight_change(change):
    torch.manual_seed(0)
    net = small_cnn()
    x = torch.randn(2, 3, 10, 10)
    with CamEngine(net, "3", steps=4) as engine:
        engine(x, [0, 1])  # caches A'
        change(net)
        after = engine(x, [0, 1])
    assert rel_err(after, _fresh(net, x, [0, 1], steps=4)) < 1e-6


def test_one_shot_functions_see_weight_changes_too():
    net = small_cnn()
    x = torch.randn(1, 3, 10, 10)
    igcam_fast.integrated_gradcam(net, x, "3", [2], steps=3)
    _scale_data(net)
    assert rel_err(igcam_fast.integrated_gradcam(net, x, "3", [2], steps=3), _fresh(net, x, [2], steps=3)) < 1e-6


# ---- the layer, the mode, the head --------------------------------------------------------------------


class SharedReLU(nn.Module):
    """One ReLU module used twice in a forward."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def test_a_layer_called_twice_in_one_forward_is_refused():
    with pytest.raises(ValueError, match="called 2 times"):
        igcam_fast.integrated_gradcam(SharedReLU().eval(), torch.randn(1, 3, 8, 8), "act", [0], steps=2)


def test_a_batchnorm_in_training_mode_inside_an_eval_model_is_named():
    net = small_cnn()
    net[1].train()
    with pytest.raises(RuntimeError, match=r"module '1' \(BatchNorm2d\) is in training mode"):
        igcam_fast.integrated_gradcam(net, torch.randn(2, 3, 8, 8), "3", [0, 1])


def test_a_training_mode_model_without_such_modules_runs():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Dropout(0.0), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2)).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    trained = igcam_fast.integrated_gradcam(net.train(), x, "1", [0, 1], steps=3)
    assert rel_err(trained, igcam_fast.integrated_gradcam(net.eval(), x, "1", [0, 1], steps=3)) < 1e-12


def test_allow_training_restores_running_statistics():
    net = small_cnn().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    igcam_fast.integrated_gradcam(net, torch.randn(2, 3, 8, 8), "3", [0, 1], steps=3, allow_training=True)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_layer_not_connected_to_the_scores_is_named():
    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.side = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            self.side(x)  # computed, never used
            return self.fc(self.conv(x).mean(dim=(2, 3)))

    with pytest.raises(ValueError, match="do not depend on layer 'side'"):
        igcam_fast.integrated_gradcam(Detached().eval(), torch.randn(1, 3, 8, 8), "side", [0], steps=2,
                                      closed_form_head=False)


# ---- non-finite values -----------------------------------------------------------------------------------


@pytest.mark.parametrize("option", [dict(mean=(0.5, float("nan"), 0.5), std=(1, 1, 1)),
                                    dict(mean=(0.5, 0.5, 0.5), std=(1, float("inf"), 1))])
def test_non_finite_normalisation_is_refused(option):
    with pytest.raises(ValueError, match="must be finite"):
        igcam_fast.integrated_gradcam(small_cnn(), torch.randn(1, 3, 8, 8), "3", [0], **option)


class Overflowing(nn.Module):
    """Activations of ~1e5 at the layer: their squares and sums overflow float16 (max 65504)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.big = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.big.weight.fill_(3e4)
            self.big.bias.zero_()

    def forward(self, x):
        a = self.big(torch.relu(self.conv(x)))
        return self.fc(torch.relu(a * a).mean(dim=(2, 3)) * 1e-9)


def test_fp16_overflow_is_redone_in_float32_and_said():
    torch.manual_seed(0)
    net = Overflowing().eval()
    x = torch.randn(1, 3, 8, 8) + 2
    result = igcam_fast.integrated_gradcam(net, x, "big", [1], steps=4, autocast=torch.float16, return_result=True)
    assert result.precision_fallback_rows > 0
    assert bool(torch.isfinite(result.maps).all())
    exact = igcam_fast.integrated_gradcam(net, x, "big", [1], steps=4)
    assert rel_err(result.maps, exact) < 1e-3


def test_a_model_that_outputs_nan_is_refused():
    class NaNModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            a = self.conv(x) * float("nan")
            return self.fc(a.mean(dim=(2, 3)))

    with pytest.raises(ValueError, match="NaN or infinite"):
        igcam_fast.integrated_gradcam(NaNModel().eval(), torch.randn(1, 3, 8, 8), "conv", steps=2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        igcam_fast.integrated_gradcam(NaNModel().eval(), torch.randn(1, 3, 8, 8), "conv", [0], steps=2)


# ---- options that used to be ignored or crash ------------------------------------------------------------


def test_normalize_applies_at_layer_resolution_too():
    result = igcam_fast.integrated_gradcam(small_cnn(), torch.randn(2, 3, 12, 12), "3", [0, 1], steps=3,
                                           normalize=True, output_size="layer", return_result=True)
    assert result.maps.shape == (2, 6, 6)
    assert torch.equal(result.maps, igcam_fast.ops.minmax_scale(result.layer_maps))  # pytorch-grad-cam's scaling
    assert float(result.maps.min()) == 0 and float(result.maps.max()) > 0.99


def test_gradcam_with_the_baseline_subtracted_is_the_ablation_preset():
    net = small_cnn(pool="max").double()
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    ours = igcam_fast.gradcam(net, x, "4", [1, 2], subtract_baseline=True)
    preset = igcam_fast.integrated_gradcam(net, x, "4", [1, 2], preset="gradcam_minus_baseline")
    assert rel_err(ours, preset) < 1e-12


@pytest.mark.parametrize("options,error,match", [
    (dict(targets=torch.tensor([True, False])), TypeError, "boolean"),
    (dict(targets="cat"), TypeError, "string 'cat'"),
    (dict(output_size=5), TypeError, "output_size"),
    (dict(output_size=(5, 0)), ValueError, "output_size"),
    (dict(steps=10**6), ValueError, "steps must be at most"),
    (dict(baseline=torch.zeros(3, 8, 8, device="meta")), ValueError, "baseline is on meta"),
    (dict(mean=(0.5, 0.5, 0.5), std=(0.2, 0.2)), ValueError, "same length"),
    (dict(nonsense=1), TypeError, "unexpected keyword argument"),
])
def test_misuse_is_named_before_any_forward(options, error, match):
    net = small_cnn()
    forwards = []
    handle = net.register_forward_hook(lambda *a: forwards.append(1))
    targets = options.pop("targets", [0, 1])
    try:
        with pytest.raises(error, match=match):
            igcam_fast.integrated_gradcam(net, torch.randn(2, 3, 8, 8), "3", targets, **options)
    finally:
        handle.remove()
    assert forwards == []


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_runs_inside_no_grad_and_inference_mode(mode):
    net = small_cnn().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    expected = igcam_fast.integrated_gradcam(net, x, "3", [0, 1], steps=3)
    with mode():
        inside = igcam_fast.integrated_gradcam(net, x.clone(), "3", [0, 1], steps=3)
    assert rel_err(inside, expected) < 1e-12
    assert torch.is_grad_enabled()


def test_a_dropped_engine_removes_its_hook():
    net = small_cnn()
    engine = CamEngine(net, "3", steps=2)
    engine(torch.randn(1, 3, 8, 8), [0])
    assert len(net[3]._forward_hooks) == 1
    del engine
    gc.collect()
    assert len(net[3]._forward_hooks) == 0


def test_one_engine_from_several_threads():
    torch.manual_seed(0)
    net = small_cnn().double()
    inputs = [torch.randn(1, 3, 8, 8, dtype=torch.float64) for _ in range(3)]
    with CamEngine(net, "3", steps=3) as engine:
        expected = [engine(x, [k % 5]) for k, x in enumerate(inputs)]
        errors, results = [], {}

        def work(k):
            try:
                for _ in range(8):
                    results.setdefault(k, []).append(engine(inputs[k], [k % 5]))
            except Exception as err:  # noqa: BLE001 - collected and reported below
                errors.append(err)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    for k in range(3):
        assert all(rel_err(r, expected[k]) < 1e-12 for r in results[k])


# ---- the model's preprocessing and memory format -----------------------------------------------------


def test_the_model_carries_its_normalisation():
    net = small_cnn().double()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    by_hand = igcam_fast.integrated_gradcam(net, x, "3", [0], steps=3, mean=mean, std=std)
    igcam_fast.attach_preprocessing(net, mean, std, input_size=8)
    assert rel_err(igcam_fast.integrated_gradcam(net, x, "3", [0], steps=3), by_hand) < 1e-12
    with pytest.raises(ValueError, match="differ from the model's own normalisation"):
        igcam_fast.integrated_gradcam(net, x, "3", [0], mean=igcam_fast.IMAGENET_MEAN, std=igcam_fast.IMAGENET_STD)


class Viewing(nn.Module):
    """PyTorch's CIFAR tutorial pattern: ``.view()`` on conv features, which channels_last breaks."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        a = torch.relu(self.conv(x))
        return self.fc(a.view(a.shape[0], -1))


def test_a_model_that_views_its_features_runs_in_its_own_layout():
    net = Viewing().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    auto = igcam_fast.integrated_gradcam(net, x, "conv", [0, 2], steps=3, return_result=True)
    contiguous = igcam_fast.integrated_gradcam(net, x, "conv", [0, 2], steps=3, channels_last=False)
    assert rel_err(auto.maps, contiguous) < 1e-12
    assert auto.settings["channels_last"] is False
    assert rel_err(igcam_fast.gradcam(net, x, "conv", [0, 2]), igcam_fast.gradcam(net, x, "conv", [0, 2],
                                                                                  channels_last=False)) < 1e-12
    with pytest.raises(RuntimeError, match="view size"):
        igcam_fast.integrated_gradcam(net, x, "conv", [0, 2], steps=3, channels_last=True)


def test_the_result_names_the_backend_of_every_op():
    net = small_cnn()
    x = torch.randn(1, 3, 8, 8)
    result = igcam_fast.integrated_gradcam(net, x, "3", [0], steps=3, return_result=True)
    assert set(result.backends) == {"path_images", "combine", "upsample"}
    assert all(name in igcam_fast.ops.backend_names() for name in result.backends.values())
    assert result.backend == result.backends["combine"]
    forced = igcam_fast.integrated_gradcam(net, x, "3", [0], steps=3, backend="torch", return_result=True)
    assert forced.backends == {"path_images": "torch", "combine": "torch", "upsample": "torch"}
