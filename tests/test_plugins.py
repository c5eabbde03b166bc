"""Plugins: a real third-party package, a broken one, and the debugging switches."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vitx
from helpers import FAMILIES, images_for, reference_attention
from vitx import registry

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "vitx-example-plugin"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """pip-install the example plugin into its own folder (the test venv stays untouched)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(EXAMPLE)], check=True, capture_output=True)
    return target


def vitx_cli(*args, pythonpath=None, extra_env=None):
    env = {**os.environ, **(extra_env or {})}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "vitx", *args], capture_output=True, text=True, env=env)


def test_installed_plugin_is_listed_and_runs(installed_example, tmp_path):
    listed = vitx_cli("methods", pythonpath=installed_example)
    assert listed.returncode == 0, listed.stderr
    assert "layer_mean  (plugin: vitx-example-plugin)" in listed.stdout
    assert "--first-layer=0" in listed.stdout

    image = ROOT / "examples" / "images" / "chelsea.png"
    ran = vitx_cli("explain", str(image), "--model", "vit_tiny_patch16_224", "--no-pretrained",
                   "--method", "layer_mean", "-o", "first_layer=1", "--out", str(tmp_path),
                   pythonpath=installed_example)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "chelsea_layer_mean.png").exists()


def test_plugin_math_in_process(installed_example, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_example))
    registry.reset()
    methods = vitx.list_methods()
    assert methods["layer_mean"][1] == "vitx-example-plugin"
    model = FAMILIES["vit"][0]()
    x = images_for((32, 32), batch=2)
    exp = vitx.explain(model, x, method="layer_mean", first_layer=1)
    expected = sum(a.mean(1)[:, 0] for a in reference_attention(model, x)[1:]) / 2
    torch.testing.assert_close(exp.relevance, expected, atol=1e-6, rtol=1e-5)


def _fake_distribution(site, name, entry_point, module_source=None):
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[vitx]\n{entry_point}\n")
    if module_source is not None:
        module = entry_point.split("=")[1].strip()
        (site / f"{module}.py").write_text(module_source)


def test_broken_plugin_warns_and_the_rest_works(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "broken-plugin", "broken = broken_vitx_plugin",
                       "raise ImportError('this plugin is broken on purpose')\n")
    ran = vitx_cli("methods", pythonpath=tmp_path)
    assert ran.returncode == 0
    assert "plugin 'broken'" in ran.stderr and "broken on purpose" in ran.stderr
    assert "Traceback" not in ran.stderr and "rollout" in ran.stdout

    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reset()
    with pytest.warns(UserWarning, match="plugin 'broken'"):
        methods = vitx.list_methods()
    assert {"raw_attention", "rollout", "grad_rollout"} <= set(methods)


def test_disable_and_allow_list(monkeypatch):
    monkeypatch.setenv("VITX_DISABLE_PLUGINS", "rollout")
    registry.reset()
    assert "rollout" not in vitx.list_methods() and "grad_rollout" in vitx.list_methods()
    with pytest.raises(vitx.VitxError, match="unknown method 'rollout'"):
        vitx.explain(FAMILIES["vit"][0](), images_for((32, 32)), method="rollout")
    monkeypatch.delenv("VITX_DISABLE_PLUGINS")
    monkeypatch.setenv("VITX_PLUGINS", "raw_attention")
    registry.reset()
    assert list(vitx.list_methods()) == ["raw_attention"]


def test_builtins_are_the_modules_of_vitx_plugins_and_import_only_the_door():
    """No setup.py line per method: every module of vitx/plugins/ is a plugin named after it."""
    import ast
    import pkgutil

    import vitx.plugins

    modules = {info.name for info in pkgutil.iter_modules(vitx.plugins.__path__)}
    assert modules >= {"raw_attention", "rollout", "grad_rollout", "chefer2021", "integrated_gradients", "gradcam",
                       "legrad", "perturbation", "shapley", "attnlrp", "transformer_attribution", "libragrad"}
    assert set(registry.get_registry().sources[m] for m in modules) == {"vitx"}
    assert all(plugin == "vitx" for _, plugin in vitx.list_methods().values())
    for module in modules:  # the plugin door is the only vitx import (the import contract checks it too)
        tree = ast.parse((Path(vitx.plugins.__path__[0]) / f"{module}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert {name for name in imported if name.split(".")[0] == "vitx"} <= {"vitx.plugin"}, module


NEW_METHOD = '''"""A method written as one file: the mean attention the explained token pays, last layer."""
from vitx.plugin import Explainer, hookimpl


class LastLayerAttention(Explainer):
    name = "last_layer_attention"
    summary = "the explained token's row of the last layer's head-mean attention"

    def attribute(self, attentions, query, gradients=None):
        return query @ attentions[-1].mean(dim=1)


@hookimpl
def vitx_register_explainers(register):
    register(LastLayerAttention)
'''


def test_a_new_method_is_one_file_found_without_reinstalling(tmp_path, monkeypatch):
    """The how-to's example (docs/howto/writing-a-plugin.md): a module dropped into the built-in
    package (here a second folder of it) is listed and explains, with no setup.py line."""
    import vitx.plugins

    (tmp_path / "last_layer_attention.py").write_text(NEW_METHOD)
    monkeypatch.setattr(vitx.plugins, "__path__", [*vitx.plugins.__path__, str(tmp_path)])
    registry.reset()
    methods = vitx.list_methods()
    assert methods["last_layer_attention"][1] == "vitx"
    model = FAMILIES["vit"][0]()
    x = images_for((32, 32), batch=2)
    exp = vitx.explain(model, x, method="last_layer_attention")
    expected = reference_attention(model, x)[-1].mean(1)[:, 0]
    torch.testing.assert_close(exp.relevance, expected, atol=1e-6, rtol=1e-5)
    monkeypatch.setenv("VITX_DISABLE_PLUGINS", "last_layer_attention")  # the switches name built-ins by module
    registry.reset()
    assert "last_layer_attention" not in vitx.list_methods()


def test_adapter_plugin_for_an_unknown_architecture():
    """A model vitx cannot see into becomes explainable through a registered adapter."""
    from contextlib import contextmanager

    from helpers import SDPAViT

    class OpaqueAttention(SDPAViT):
        pass

    class OpaqueAdapter(vitx.Adapter):
        name, priority = "opaque", 1000

        def matches(self, model):
            return isinstance(model, OpaqueAttention)

        @contextmanager
        def attach(self, model, record):
            for block in model.blocks:
                block.explicit = True
            def on_block(module, args, output):
                record(module.last_attention)  # returns None: the block's output is untouched

            handles = [b.register_forward_hook(on_block) for b in model.blocks]
            try:
                yield
            finally:
                for h in handles:
                    h.remove()
                for block in model.blocks:
                    block.explicit = False

        def layout(self, model, input_size, num_tokens):
            return vitx.TokenLayout(prefix={"cls": 0}, num_prefix=1, grid=(4, 4))

    class Plugin:
        @vitx.hookimpl
        def vitx_register_adapters(self, register):
            register(OpaqueAdapter())

    before = registry.find_adapter(OpaqueAttention()).name
    vitx.register_plugin(Plugin(), name="opaque-test")
    model = OpaqueAttention().eval()
    assert before == "generic" and registry.find_adapter(model).name == "opaque"
    exp = vitx.explain(model, images_for((32, 32)), method="rollout")
    assert exp.maps.shape == (3, 4, 4)


ESCAPING_PLUGIN = '''
import vitx
from vitx.attribution.explainer import Explainer, MODEL


class Escape(Explainer):
    name = "../../../tmp/escaped"
    requires = (MODEL,)

    def explain(self, evidence):
        return evidence.pixels.new_ones(evidence.pixels.shape[0], evidence.layout.num_tokens)


@vitx.hookimpl
def vitx_register_explainers(register):
    register(Escape)


@vitx.hookimpl
def vitx_register_models(register):
    raise RuntimeError("models hook broken on purpose")
'''


def test_a_plugin_name_that_is_a_path_is_refused_and_a_raising_hook_is_listed(tmp_path):
    """A plugin registering the method `../../../tmp/escaped` once made `--method` write a PNG
    outside --out; its hook that raised was not listed by `vitx methods` (only import failures
    were). Warnings are one `warning:` line each, never Python's two-line form."""
    site = tmp_path / "site"
    _fake_distribution(site, "escape-plugin", "escape = escape_vitx_plugin", ESCAPING_PLUGIN)
    listed = vitx_cli("methods", pythonpath=site)
    assert listed.returncode == 0, listed.stderr
    assert "escaped" not in listed.stdout.replace("failed", "")
    assert "models hook broken on purpose" in listed.stdout  # listed among the failed plugins
    warned = [line for line in listed.stderr.splitlines() if line.strip()]
    assert warned and all(line.startswith("warning: vitx: plugin") for line in warned), listed.stderr
    assert any("'../../../tmp/escaped'" in line and "identifier" in line for line in warned)
    image = ROOT / "examples" / "fashion_mnist" / sorted(p.name for p in (ROOT / "examples" / "fashion_mnist").glob("*.png"))[0]
    out = tmp_path / "deep" / "a" / "b" / "out"
    ran = vitx_cli("explain", str(image), "--method", "../../../tmp/escaped", "--out", str(out), pythonpath=site)
    assert ran.returncode == 1 and "Error: unknown method" in ran.stderr, ran.stderr
    assert not list(tmp_path.rglob("*.png"))


def test_output_names_never_leave_the_folder(tmp_path):
    from vitx.files import output_names

    assert output_names(["a.png"], "rollout", tmp_path) == ["a_rollout"]
    with pytest.raises(vitx.VitxError, match="leave the output folder"):
        output_names(["a.png"], "../../x", tmp_path)
