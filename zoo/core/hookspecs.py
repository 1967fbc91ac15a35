"""The hooks a zoo plugin can implement.

A plugin is any module or object with functions marked ``@zoo.hookimpl``. Built-in
components are ordinary plugins registered through these same hooks; third-party
packages declare theirs in the ``zoo`` entry-point group, and local files or modules
are named with ``zoo --plugin PATH_OR_MODULE`` or the ``ZOO_PLUGINS`` variable.
"""

import pluggy

PROJECT_NAME = "zoo"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def zoo_register_components(registry):
    """Add model components to ``registry``.

    Call ``registry.add(kind, name, component)`` once per component, where ``kind`` is
    one of ``positional``, ``attention``, ``block``, ``norm`` or ``mlp`` and
    ``component`` is an ``nn.Module`` subclass following the protocol of
    :mod:`zoo.core.components` for that kind (its base classes are ``zoo.PositionalScheme``, ``zoo.Attention``, ``zoo.Block``, ``zoo.Norm`` and ``zoo.MLP``; see ``docs/plugins.md``). A name already taken by another plugin is
    refused with an error naming both plugins.
    """


@hookspec
def zoo_register_exporters(registry):
    """Add export formats to ``registry``.

    Call ``registry.add("exporter", name, exporter)``, where ``exporter`` is a
    :class:`zoo.Exporter`: ``exporter(model, spec, out_dir, **options)`` writes the
    exported files into ``out_dir`` (a fresh temporary directory that the zoo renames into
    place once the call returns) and returns a manifest dictionary with a ``files``
    mapping. Its ``options`` (:class:`zoo.ExportOption`) become ``zoo export --format
    NAME`` options, checked by its ``check`` before any work; every exporter also gets
    ``verify`` (bool) and ``tokenizer_dir``.

    A format that can be run may also add its runtime: ``registry.add("runtime", name,
    open)``, where ``open(directory, device="cpu", **options)`` returns a model for
    ``zoo generate --runtime NAME`` / ``zoo translate --runtime NAME``.
    """


@hookspec
def zoo_register_checkpoint_formats(registry):
    """Add Hugging Face checkpoint formats to ``registry``, one per ``model_type``.

    Call ``registry.add("checkpoint_format", model_type, fmt)``, where ``model_type`` is
    the value of ``config.json``'s ``model_type`` (``"llama"``) and ``fmt`` a
    :class:`zoo.CheckpointFormat`: the parameter-name table (Hugging Face name patterns
    with ``{i}`` for the layer, as data), the tensor transforms between the two layouts
    (transposes, fused or separate projections, per-head interleaving), the
    ``config.json`` <-> spec mapping in both directions and the ``transformers`` class
    to verify against. ``zoo build --weights DIR``, ``zoo verify --against hf`` and
    ``zoo export --format hf`` then work for that family; see ``docs/plugins.md``.
    """


@hookspec(firstresult=True)
def zoo_positional_picture(scheme, spec, length, figure):
    """Draw positional scheme ``scheme`` for ``zoo show positional`` into ``figure``.

    ``scheme`` is the scheme instance (a ``zoo.PositionalScheme``;
    learned weights are loaded when the user passed them), ``spec`` the model spec it
    belongs to, ``length`` the number of positions to show, and ``figure`` an empty
    :class:`matplotlib.figure.Figure` with constrained layout whose suptitle the zoo
    writes. Add axes (or subfigures) to it, with titles, labelled axes and colour bars,
    and call ``figure.set_size_inches`` if the picture needs another size.

    Return True if the plugin drew the scheme, None to leave it to another plugin: the
    first plugin to return a result wins, so a positional plugin can provide the
    picture of its own scheme. The built-in ``zoo.plugins.pictures`` runs last and draws
    any scheme from what it does through the ``zoo.PositionalScheme``
    methods (added embeddings, rotated queries and keys, attention-score bias).
    """
