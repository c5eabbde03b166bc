"""Inputs the way users get them wrong, drawn by hypothesis (a fixed seed, a bounded number of
examples): image sizes, dtypes, value ranges, channel counts, batch shapes, every method's
option values, targets and baselines. The library gives finite maps or one `VitxError` line;
the CLI gives its files and exit 0, or one `Error:` line and exit 1. Never another exception,
never a NaN map whose image no warning names."""
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import vitx
from helpers import run
from vitx.baselines import BASELINES

SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
# small enough to run in seconds per example: valid values of the costly sizes are drawn low
CHEAP = {"steps": 6, "permutations": 4, "masks": 12, "internal_batch_size": 64}


@pytest.fixture(scope="module")
def model():
    return vitx.load_model("fashion_vit")


def option_values(option, valid_only=False):
    """Values of one method option: valid ones (cheap), out-of-range ones and wrong types."""
    wrong = st.sampled_from([None, "x", [1], True, float("nan"), -1, 10 ** 12])
    if valid_only:
        return _valid(option)
    if option.choices:
        return st.one_of(st.sampled_from(option.choices), wrong)
    if option.type is int:
        low = int(option.minimum if option.minimum is not None else -2)
        high = min(int(option.maximum) if option.maximum is not None else low + 8, low + CHEAP.get(option.name, 8))
        valid = st.integers(low, max(low, high))
        if option.step:
            valid = valid.map(lambda v: v + v % option.step)
        return st.one_of(valid, st.integers(-10 ** 15, 10 ** 15), st.floats(allow_nan=True), wrong)
    if option.type is float:
        return st.one_of(st.floats(option.minimum if option.minimum is not None else -1.0,
                                   option.maximum if option.maximum is not None else 1.0), st.floats(), wrong)
    if option.name == "baseline":
        return st.one_of(st.sampled_from(BASELINES + ("grey",)), st.builds(
            torch.randn, st.sampled_from([(1, 28, 28), (3, 28, 28), (1, 14, 14), (2, 1, 28, 28), (5, 1, 28, 28)])))
    return st.one_of(st.text(max_size=5), wrong)


def _valid(option):
    if option.choices:
        return st.sampled_from(option.choices)
    if option.type is int:
        low = int(option.minimum if option.minimum is not None else 0)
        high = min(int(option.maximum) if option.maximum is not None else low + 4, low + CHEAP.get(option.name, 4))
        step = option.step or 1
        return st.integers(low // step, max(low, high) // step).map(lambda v: max(v * step, low))
    if option.type is float:
        return st.floats(option.minimum if option.minimum is not None else 0.0,
                         option.maximum if option.maximum is not None else 1.0)
    if option.name == "baseline":
        return st.sampled_from(BASELINES)
    return st.just(option.default)


@st.composite
def method_call(draw):
    """A method and some of its options: half the time only valid values (so the maps are
    checked), else anything."""
    methods = vitx.list_methods()
    name = draw(st.sampled_from(sorted(methods)))
    valid_only = draw(st.booleans())
    declared = {option.name for option in methods[name][0].options}
    options = {key: value for key, value in CHEAP.items() if key in declared and key != "internal_batch_size"}
    for option in methods[name][0].options:
        if draw(st.booleans()):
            options[option.name] = draw(option_values(option, valid_only))
    return name, options


def images():
    """What users pass as images: arrays of any dtype, range, shape and channel count, tensors of
    the wrong size, PIL images of every mode."""
    size = st.integers(1, 40)
    dtypes = st.sampled_from([np.uint8, np.uint16, np.int16, np.float32, np.float64, np.bool_])
    ranges = st.sampled_from([(0, 1), (0, 255), (-5, 300), (0, 65535)])

    @st.composite
    def array(draw):
        h, w = draw(size), draw(size)
        shape = draw(st.sampled_from([(h, w), (h, w, 1), (h, w, 3), (h, w, 4), (h, w, 2), (3, h, w), (h, w, 5)]))
        low, high = draw(ranges)
        values = np.random.default_rng(draw(st.integers(0, 99))).uniform(low, high, size=shape)
        values = values.astype(draw(dtypes))
        if draw(st.integers(0, 9)) == 0 and values.dtype.kind == "f":
            values.flat[0] = draw(st.sampled_from([np.nan, np.inf]))
        return values

    @st.composite
    def tensor(draw):
        batch, channels, h, w = draw(st.integers(0, 3)), draw(st.integers(1, 4)), draw(size), draw(size)
        shape = draw(st.sampled_from([(batch, channels, h, w), (channels, h, w), (batch, 1, 28, 28)]))
        made = torch.randn(shape) * draw(st.sampled_from([1.0, 1e6]))
        return made.to(draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64])))

    @st.composite
    def picture(draw):
        mode = draw(st.sampled_from(["L", "RGB", "RGBA", "I;16", "F", "P", "1", "CMYK", "LA"]))
        return Image.new(mode, (draw(size), draw(size)))

    @st.composite
    def fine(draw):  # what the model takes: grey or colour pictures of any size
        h, w = draw(st.integers(8, 40)), draw(st.integers(8, 40))
        channels = draw(st.sampled_from([(), (3,)]))
        return np.random.default_rng(draw(st.integers(0, 99))).integers(0, 256, size=(h, w, *channels), dtype=np.uint8)

    return st.one_of(st.lists(fine(), min_size=1, max_size=3), tensor(),
                     st.lists(st.one_of(array(), picture()), min_size=1, max_size=3), array(), picture())


targets = st.one_of(st.none(), st.integers(-12, 12), st.integers(-10 ** 20, 10 ** 20),
                    st.lists(st.integers(0, 9), max_size=4), st.sampled_from([2.5, "3", True, [[1]]]))


def assert_finite_or_named(explanation, caught):
    """Finite maps, or NaN maps only for images a warning names."""
    bad = [i for i in range(explanation.maps.shape[0]) if not torch.isfinite(explanation.maps[i]).all()]
    if bad:
        messages = " ".join(str(w.message) for w in caught)
        assert "image" in messages, f"NaN maps for images {bad} with no warning naming them: {messages!r}"


@settings(max_examples=40, **SETTINGS)
@given(pictures=images(), call=method_call(), target=targets)
def test_the_library_gives_finite_maps_or_one_error_line(model, pictures, call, target):
    method, options = call
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            explanation = vitx.explain(model, pictures, method=method, target=target, **options)
        except vitx.VitxError as error:
            assert "\n" not in str(error).strip(), str(error)
            return
    assert_finite_or_named(explanation, caught)


@settings(max_examples=15, **SETTINGS)
@given(call=method_call(), size=st.tuples(st.integers(1, 60), st.integers(1, 60)),
       mode=st.sampled_from(["L", "RGB", "RGBA", "I;16", "P"]), target=st.one_of(st.none(), st.integers(-3, 12)),
       damage=st.sampled_from([None, "truncate", "text"]))
def test_the_cli_writes_its_files_or_one_error_line(tmp_path_factory, call, size, mode, target, damage):
    method, options = call
    folder = tmp_path_factory.mktemp("cli")
    image = folder / "in.png"
    Image.new(mode, size).save(image)
    if damage == "truncate":
        image.write_bytes(image.read_bytes()[:20])
    elif damage == "text":
        image.write_text("not an image")
    flags = [f"-o{name}={_text(value)}" for name, value in options.items() if not torch.is_tensor(value)]
    args = ["explain", image, "--method", method, "--out", folder / "out", *flags]
    if target is not None:
        args += ["--target", target]
    result = run(*args)
    assert "Traceback" not in result.output, result.output
    if result.exit_code == 0:
        assert (folder / "out" / f"in_{method}.png").exists(), result.output
        return
    lines = [line for line in result.output.strip().splitlines() if not line.startswith(("warning:", "note:"))]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert not list((folder / "out").glob("*.png")) if (folder / "out").exists() else True


def _text(value):
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return str(value)
