"""Plugin hooks. Each receives a `register` callable (the simonw/llm and datasette style),
so a plugin only says what it adds and vitx decides how to store it.

A plugin module::

    import vitx

    @vitx.hookimpl
    def vitx_register_explainers(register):
        register(MyExplainer)

and a package declares it with `entry_points={"vitx": ["my_plugin = my_package.module"]}`.
"""
import pluggy

hookspec = pluggy.HookspecMarker("vitx")
hookimpl = pluggy.HookimplMarker("vitx")


@hookspec
def vitx_register_explainers(register):
    """Call register(ExplainerSubclass) for each explainer the plugin provides."""


@hookspec
def vitx_register_adapters(register):
    """Call register(adapter_instance) for each model family the plugin can record."""


@hookspec
def vitx_register_models(register):
    """Call register(name, loader, description=..., aliases=...) for named models.

    `loader(checkpoint=None, pretrained=None, **kwargs)` returns an nn.Module.
    """


@hookspec
def vitx_register_commands():
    """Return a list of click commands to add to the `vitx` CLI."""


@hookspec(firstresult=True)
def vitx_load_model_file(path):
    """Return an nn.Module built from the model file (or run / model folder) at `path`, or None if not yours."""
