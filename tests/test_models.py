import pytest
import torch

from robustmnist import RobustMnistError
from robustmnist.models import MODELS, build_model, count_parameters


@pytest.mark.parametrize("name", list(MODELS))
def test_output_is_log_probabilities(name):
    torch.manual_seed(0)
    out = build_model(name)(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(5))


@pytest.mark.parametrize("name", list(MODELS))
def test_channels_last_gives_same_output(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.randn(4, 1, 28, 28)
    ref = model(x)
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), ref,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("name", "count"), [("baseline", 1_007_590), ("wide", 2_013_270),
                                                    ("wide3", 3_022_550)])
def test_parameter_count(name, count):
    assert count_parameters(build_model(name)) == count


def test_pool_before_relu_equals_classic_order():
    torch.manual_seed(0)
    model = build_model("baseline").eval()
    x = torch.randn(3, 1, 28, 28)
    f = torch.nn.functional
    h = f.max_pool2d(f.relu(model.conv1(x)), 2)  # the textbook order
    h = f.relu(model.fc1(f.relu(model.conv2(h)).flatten(1)))
    torch.testing.assert_close(model(x), f.log_softmax(model.fc2(h), 1))


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_inference_forward_equals_training_forward(fmt):
    # Outside autograd the pooling takes another path; it must give the same numbers, on
    # blank digits too (every conv1 value equal: ties everywhere) and with a NaN pixel.
    torch.manual_seed(0)
    model = build_model("baseline").eval().to(memory_format=fmt)
    x = torch.rand(6, 1, 28, 28)
    x[1] = 0
    x[2, 0, 3, 5] = float("nan")
    x = x.contiguous(memory_format=fmt)
    with torch.enable_grad():
        ref = model(x)
    with torch.inference_mode():
        fast = model(x)
    assert torch.equal(fast[~fast.isnan().any(1)], ref[~ref.isnan().any(1)].detach())
    assert torch.equal(fast.isnan(), ref.isnan())


def test_max_pool2x2_matches_max_pool2d_on_odd_sizes():
    from robustmnist.models import max_pool2x2

    x = torch.randn(2, 3, 9, 5)
    x[0, 0, :2, :2] = 1.0  # a tie
    assert torch.equal(max_pool2x2(x), torch.nn.functional.max_pool2d(x, 2))


def test_unknown_model():
    with pytest.raises(RobustMnistError, match="unknown model"):
        build_model("resnet")
