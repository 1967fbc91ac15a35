"""``zoo show model``: the assembled architecture as a diagram, without allocating weights.

The model is assembled on the meta device (:func:`zoo.core.meta.assemble`) and run once
on meta tensors. Forward hooks on the first block of each stack record its sublayers in
the order they run, and a torch function mode records the additions between their
outputs, so the diagram shows where each residual connection leaves the main path and
where it joins it, and which sublayers read the same input (the parallel layout). Any
block layout a plugin brings is drawn as it really runs. Boxes carry the component's
plugin name and parameter count.
"""

from __future__ import annotations

import dataclasses

import sys
import textwrap
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from zoo.core.limits import EXACT_LAYERS, parameter_rows
from zoo.core.meta import assemble
from zoo.core.components import PositionalScheme
from zoo.core.registry import get_registry
from zoo.core.spec import ModelSpec
from zoo.errors import PictureError
from zoo.show.figures import compact, docstring_summary, new_figure

COLORS = {  # the Transformer paper's palette
    "embedding": "#f4c7c3", "positional": "#e1d5f0", "attention": "#fcd9a8", "cross-attention": "#f9c784",
    "norm": "#fff2a8", "mlp": "#c9e4f6", "head": "#c8e6c9", "block": "#f4f4f4", "other": "#e0e0e0",
}
BOX_W, BOX_H, GAP, ADD_R = 3.4, 0.62, 0.3, 0.13  # inches
COLUMN_W = 5.6
TABLE_W = 5.4
BLOCK_INPUT = -1  # node index standing for the block's input


@dataclass
class Sublayer:
    """One sublayer of a block: its attribute, what it is, its plugin and parameters."""

    attr: str  # "attn", "ln_1", ...
    kind: str  # "attention", "cross-attention", "norm", "mlp" or "other"
    plugin: str  # registry name, or the class name of an unregistered module
    params: int


@dataclass
class Node:
    """A step of the block's main path: sublayers reading one input, or a residual add."""

    sublayers: list[Sublayer] = field(default_factory=list)  # empty for an add
    branches: list[int] = field(default_factory=list)  # add: the nodes whose outputs it sums on the main path
    skip_from: int | None = None  # add: the node (or BLOCK_INPUT) the residual connection leaves from

    @property
    def is_add(self) -> bool:
        return not self.sublayers


class _AddRecorder(TorchFunctionMode):
    """Appends every tensor addition (operands and result) to the list of the block running now."""

    def __init__(self, recording: list[list]) -> None:
        super().__init__()
        self.recording = recording

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.recording and getattr(func, "__name__", "") in ("add", "__add__", "__radd__") and len(args) == 2 \
                and all(isinstance(a, torch.Tensor) for a in args):
            self.recording[-1].append(("add", args[0], args[1], out))
        return out


def _plugin_of(module: nn.Module) -> tuple[str, str]:
    registry = get_registry()
    for kind in ("attention", "norm", "mlp", "positional", "block"):
        name = registry.name_of(kind, type(module))
        if name is not None:
            return kind, name
    return "other", type(module).__name__


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _stacks(model: nn.Module, spec: ModelSpec) -> dict[str, nn.Module]:
    if spec.is_encoder_decoder:
        return {"encoder": model.encoder, "decoder": model.decoder}
    return {"decoder": model.stack}


def trace_blocks(model: nn.Module, spec: ModelSpec) -> dict[str, list[Node]]:
    """The main path of the first block of each stack ("encoder", "decoder"), traced on meta tensors."""
    events: dict[str, list] = {}
    recording: list = []  # the events of the block running now
    handles = []
    for stack_name, stack in _stacks(model, spec).items():
        block = stack.h[0]
        events[stack_name] = []

        def start(module, inputs, stack_name=stack_name):
            recording.append(events[stack_name])
            events[stack_name].append(("input", inputs[0]))

        def stop(module, inputs, output):
            recording.pop()
        handles += [block.register_forward_pre_hook(start), block.register_forward_hook(stop)]
        for attr, child in block.named_children():
            def called(module, inputs, output, attr=attr):
                if recording:
                    recording[-1].append(("sublayer", attr, module, inputs[0], output))
            handles.append(child.register_forward_hook(called))

    ids = torch.zeros(1, 4, dtype=torch.long, device="meta")  # (B, T)
    model.eval()
    try:
        with torch.no_grad(), _AddRecorder(recording):
            if spec.is_encoder_decoder:
                model(ids, ids)
            else:
                model(ids)
    except Exception as exc:  # a plugin that needs real numbers cannot run on the meta device
        raise PictureError(f"cannot trace {spec.name}'s blocks on the meta device ({type(exc).__name__}: {exc}); "
                           "its plugins must run on meta tensors for 'zoo show model'") from None
    finally:
        for handle in handles:
            handle.remove()
    return {name: _main_path(stack_events) for name, stack_events in events.items()}


def _main_path(events: list) -> list[Node]:
    """Turn one block's recorded calls and additions into main-path nodes.

    ``events`` holds every traced tensor alive, so their ids stay unique."""
    known: dict[int, int] = {}  # id(tensor) -> node index that produced it
    nodes: list[Node] = []
    group, group_input = None, None  # the latest sublayer node and its input
    for event in events:
        if event[0] == "input":
            known[id(event[1])] = BLOCK_INPUT
            continue
        if event[0] == "sublayer":
            _, attr, module, inp, out = event
            if isinstance(module, nn.Dropout):  # changes no structure: its output stands for its input
                if id(inp) in known:
                    known[id(out)] = known[id(inp)]
                continue
            kind, plugin = _plugin_of(module)
            if kind == "attention" and attr == "crossattention":
                kind = "cross-attention"
            sub = Sublayer(attr, kind, plugin, _params(module))
            if group is not None and inp is group_input:
                nodes[group].sublayers.append(sub)  # reads the same input: a parallel branch
            else:
                nodes.append(Node(sublayers=[sub]))
                group, group_input = len(nodes) - 1, inp
            known[id(out)] = group
            continue
        _, a, b, out = event
        sources = [known.get(id(t)) for t in (a, b)]
        if None in sources:
            continue  # an addition inside a sublayer, not between them
        last = len(nodes) - 1
        if nodes and nodes[-1].is_add and last in sources:
            other = sources[1 - sources.index(last)]
            if other < last:  # x + f(h) + g(h): one add joins both parallel branches
                if other not in nodes[-1].branches:
                    nodes[-1].branches.append(other)
                known[id(out)] = last
                continue
        main, skip = max(sources), min(sources)
        nodes.append(Node(branches=[main], skip_from=skip))
        known[id(out)] = len(nodes) - 1
    return nodes


def _where_positions_act(scheme: nn.Module) -> str:
    cls = type(scheme)
    acts = []
    if cls.embed is not PositionalScheme.embed:
        acts.append("added to the embeddings")
    if cls.rotate is not PositionalScheme.rotate:
        acts.append("rotates q, k in attention")
    if cls.attention_bias is not PositionalScheme.attention_bias:
        acts.append("biases attention scores")
    return "; ".join(acts) or "adds nothing"


def _detail(kind: str, spec: ModelSpec, params: int) -> str:
    count = f"{compact(params)} params"
    if kind in ("attention", "cross-attention"):
        heads = f"{spec.n_heads} heads × {spec.head_dim}"
        if kind == "attention" and spec.n_kv_heads != spec.n_heads:
            heads += f", {spec.n_kv_heads} kv heads"
        return f"{heads} · {count}"
    if kind == "mlp":
        return f"d_ff {spec.d_ff} · {count}"
    return count


class Diagram:
    """Boxes, adds, arrows and labels placed in inches on one axes, drawn bottom to top."""

    def __init__(self, ax) -> None:
        self.ax = ax

    def box(self, x: float, y: float, kind: str, title: str, detail: str = "", width: float = BOX_W) -> None:
        from matplotlib.patches import FancyBboxPatch

        self.ax.add_patch(FancyBboxPatch((x - width / 2, y - BOX_H / 2), width, BOX_H, boxstyle="round,pad=0.02",
                                         facecolor=COLORS[kind], edgecolor="#444444", linewidth=1))
        narrow = width < BOX_W
        size = 8.5 if narrow else 9.5
        if narrow:  # a parallel branch: its detail on two lines
            detail = detail.replace(" · ", "\n", 1)
        if detail:
            self.ax.text(x, y + (0.16 if narrow and "\n" in detail else 0.1), title, ha="center", va="center",
                         fontsize=size, fontweight="bold")
            self.ax.text(x, y - 0.1 if narrow and "\n" in detail else y - 0.13, detail, ha="center", va="center",
                         fontsize=size - 1, color="#333333", linespacing=1.1)
        else:
            self.ax.text(x, y, title, ha="center", va="center", fontsize=size, fontweight="bold")

    def add(self, x: float, y: float) -> None:
        from matplotlib.patches import Circle

        self.ax.add_patch(Circle((x, y), ADD_R, facecolor="white", edgecolor="#444444", linewidth=1))
        self.ax.text(x, y - 0.01, "+", ha="center", va="center", fontsize=11)

    def arrow(self, start: tuple[float, float], end: tuple[float, float], color: str = "#444444", **style) -> None:
        self.ax.annotate("", xy=end, xytext=start,
                         arrowprops=dict(arrowstyle="-|>", color=color, linewidth=1, shrinkA=0, shrinkB=0, **style))

    def skip(self, x: float, from_y: float, to_y: float) -> None:
        """A residual connection: from the main path at ``from_y``, round the left, into the add."""
        rail = x - BOX_W / 2 - 0.3
        self.ax.plot([x, rail, rail], [from_y, from_y, to_y], color="#777777", linewidth=1)
        self.ax.plot([x], [from_y], marker="o", markersize=3, color="#777777")
        self.arrow((rail, to_y), (x - ADD_R, to_y), color="#777777")

    def label(self, x: float, y: float, text: str, **style) -> None:
        self.ax.text(x, y, text, ha="center", va="center", fontsize=9, **style)


def _draw_block(d: Diagram, x: float, spec: ModelSpec, nodes: list[Node], entry_y: float) -> tuple[float, list]:
    """Draw a block's nodes upwards from ``entry_y``; return the top of its main path and
    the (left edge, y) of each cross-attention box."""
    out_y = {BLOCK_INPUT: entry_y}  # where each node's output leaves the main path
    top = entry_y  # the highest point drawn on the main path
    branch_tops: list[tuple[float, float]] = []  # tops of parallel boxes, which feed the next add
    cross = []
    for index, node in enumerate(nodes):
        if node.is_add:
            y = top + GAP / 2 + ADD_R
            d.add(x, y)
            if branch_tops:  # parallel branches meet here, each arrow ending on the circle
                for bx, by in branch_tops:
                    length = ((bx - x) ** 2 + (by - y) ** 2) ** 0.5
                    d.arrow((bx, by), (x + (bx - x) * ADD_R / length, y + (by - y) * ADD_R / length))
                branch_tops = []
            else:
                d.arrow((x, top), (x, y - ADD_R))
            d.skip(x, out_y[node.skip_from], y)
            out_y[index] = y + ADD_R + GAP / 3
            top = y + ADD_R
            continue
        y = top + GAP + BOX_H / 2
        group = node.sublayers
        width = BOX_W if len(group) == 1 else (BOX_W - 0.15 * (len(group) - 1)) / len(group)
        for j, sub in enumerate(group):
            cx = x - BOX_W / 2 + width / 2 + j * (width + 0.15)
            d.box(cx, y, sub.kind, f"{sub.attr}: {sub.plugin}", _detail(sub.kind, spec, sub.params), width=width)
            d.arrow((x, top), (cx, y - BOX_H / 2))
            if len(group) > 1:
                branch_tops.append((cx, y + BOX_H / 2))
            if sub.kind == "cross-attention":
                cross.append((cx - width / 2, y))
        out_y[index] = y + BOX_H / 2 + GAP / 3
        top = y + BOX_H / 2 + (GAP / 2 if len(group) > 1 else 0)  # room for branches to converge
    return top, cross


def _draw_column(d: Diagram, x: float, spec: ModelSpec, model: nn.Module, nodes: list[Node], stack_name: str,
                 n_layers: int, stack: nn.Module) -> dict:
    """One stack from its token ids up; return the y of its top and its cross-attention boxes."""
    step = BOX_H + GAP
    y = 0.45
    inputs = {"encoder": "source token ids", "decoder": "target token ids" if spec.is_encoder_decoder else "token ids"}
    d.label(x, y, inputs[stack_name], style="italic")
    shared = spec.is_encoder_decoder and stack_name == "decoder"
    embedding = model.embed if spec.is_encoder_decoder else model.wte
    y += step
    d.arrow((x, y - step + 0.12), (x, y - BOX_H / 2))
    d.box(x, y, "embedding", "token embedding" + (" (shared)" if shared else ""),
          "the encoder's weights" if shared else
          f"{spec.vocab_size:,} × {spec.d_model} · {compact(_params(embedding))} params")
    y += step
    d.arrow((x, y - step + BOX_H / 2), (x, y - BOX_H / 2))
    scheme = model.positional
    d.box(x, y, "positional", f"positional: {spec.positional.type}",
          f"{_where_positions_act(scheme)} · {compact(_params(scheme))} params")
    frame_bottom = y + BOX_H / 2 + GAP
    entry_y = frame_bottom + 0.15
    d.arrow((x, y + BOX_H / 2), (x, entry_y))
    d.ax.plot([x, x], [entry_y - 0.01, entry_y + 0.01], color="#444444", linewidth=1)
    top, cross = _draw_block(d, x, spec, nodes, entry_y)
    # caption: "N × layout block" on the left, the layout's docstring on the right
    block = stack.h[0]
    doc = textwrap.wrap(docstring_summary(sys.modules[type(block).__module__].__doc__), 34)
    caption_h = max(0.55, 0.17 * len(doc) + 0.2)
    frame_top = top + GAP / 2 + caption_h
    left = x - COLUMN_W / 2 + 0.1
    d.ax.add_patch(_frame(left, frame_bottom, COLUMN_W - 0.2, frame_top - frame_bottom))
    role = f"{stack_name} " if spec.is_encoder_decoder else ""
    d.ax.text(left + 0.15, frame_top - 0.12, f"{n_layers} × {spec.block.type} {role}block\n"
              f"{compact(_params(stack.h) * n_layers // len(stack.h))} params", fontsize=9.5, fontweight="bold", va="top", ha="left")
    d.ax.text(x + COLUMN_W / 2 - 0.25, frame_top - 0.12, "\n".join(doc), fontsize=8, color="#555555",
              va="top", ha="right")
    d.arrow((x, top), (x, frame_top + GAP))
    y = frame_top + GAP + BOX_H / 2
    if stack.ln_f is not None:
        _, norm_name = _plugin_of(stack.ln_f)
        d.box(x, y, "norm", f"final norm: {norm_name}", f"{compact(_params(stack.ln_f))} params")
        d.arrow((x, y + BOX_H / 2), (x, y + step - BOX_H / 2))
        y += step
    if stack_name == "encoder":
        d.label(x, y - BOX_H / 2 + 0.1, "memory", style="italic")
        return {"top": y - BOX_H / 2 + 0.1, "cross": cross}
    head_params = 0 if spec.tie_embeddings else _params(model.lm_head)
    d.box(x, y, "head", "LM head", "tied to the token embedding" if spec.tie_embeddings
          else f"{spec.d_model} × {spec.vocab_size:,} · {compact(head_params)} params")
    d.arrow((x, y + BOX_H / 2), (x, y + step - 0.12))
    d.label(x, y + step, f"logits over {spec.vocab_size:,} tokens", style="italic")
    return {"top": y + step, "cross": cross}


def _frame(left: float, bottom: float, width: float, height: float):
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch((left, bottom), width, height, boxstyle="round,pad=0.04", facecolor=COLORS["block"],
                          edgecolor="#888888", linewidth=1.2, zorder=-1)


def draw_parameter_table(ax, rows: list, top: float) -> None:
    """``zoo describe``'s parameter table, one text per cell (SVG viewers collapse the
    spaces a monospace block would rely on), starting ``top`` inches up on ``ax``."""
    total = sum(r.count for r in rows)
    body = [(r.part, r.plugin, f"{r.count:,}", f"{100 * r.count / total:.1f}%") for r in rows]
    columns = ((0.15, "left"), (1.45, "left"), (4.2, "right"), (4.95, "right"))  # inches
    line = 0.2
    lines = [("part", "plugin", "parameters", "share"), *body, ("total", "", f"{total:,}", "100.0%")]
    for i, row in enumerate(lines):
        y = top - i * line - (0.08 if i == len(lines) - 1 else 0)
        bold = "bold" if i in (0, len(lines) - 1) else "normal"
        for (x, align), value in zip(columns, row):
            ax.text(x, y, value, ha=align, va="center", fontsize=9, fontweight=bold)
    for y in (top - line / 2, top - (len(lines) - 1.5) * line - 0.04):
        ax.plot([columns[0][0], columns[-1][0]], [y, y], color="#888888", linewidth=0.8)


def model_figure(spec: ModelSpec):
    """A diagram of the model ``spec`` assembles: token embedding, positions, N× block with
    its sublayers and residual connections, final norm and LM head — an encoder column and
    a decoder column for an encoder-decoder — with plugin names and parameter counts, and
    the parameter table. Everything stays on the meta device: no weights are allocated.
    Past :data:`~zoo.core.limits.EXACT_LAYERS` layers the drawing assembles one layer per
    stack (every layer has the same sublayers) and the counts come from shapes."""
    layer_fields = ("n_layers", "n_decoder_layers") if spec.is_encoder_decoder else ("n_layers",)
    deep = sum(getattr(spec, f) for f in layer_fields) > EXACT_LAYERS
    model = assemble(dataclasses.replace(spec, **{f: 1 for f in layer_fields}) if deep else spec)
    rows, _ = parameter_rows(spec)
    traces = trace_blocks(model, spec)
    stacks = _stacks(model, spec)
    layers = {"encoder": spec.n_layers, "decoder": spec.n_decoder_layers if spec.is_encoder_decoder else spec.n_layers}
    width = COLUMN_W * len(stacks) + TABLE_W
    figure = new_figure(width, 10)
    figure.set_layout_engine("none")
    diagram_w = COLUMN_W * len(stacks)
    ax = figure.add_axes((0, 0, diagram_w / width, 1))
    ax.set_axis_off()
    d = Diagram(ax)
    drawn = {name: _draw_column(d, COLUMN_W * (i + 0.5), spec, model, traces[name], name, layers[name], stack)
             for i, (name, stack) in enumerate(stacks.items())}
    if spec.is_encoder_decoder:
        memory = (COLUMN_W * 0.5 + 0.4, drawn["encoder"]["top"])
        for left, y in drawn["decoder"]["cross"]:
            d.arrow(memory, (left, y), color="#b36b00", connectionstyle="arc3,rad=-0.2")
    height = max(c["top"] for c in drawn.values()) + 0.5
    figure.set_size_inches(width, height)
    ax.set_xlim(0, diagram_w)
    ax.set_ylim(0, height)
    table_ax = figure.add_axes((diagram_w / width, 0, TABLE_W / width, 1))
    table_ax.set_axis_off()
    table_ax.set_xlim(0, TABLE_W)
    table_ax.set_ylim(0, height)
    total = sum(r.count for r in rows)
    family = (f"encoder-decoder · {spec.n_layers}+{spec.n_decoder_layers} layers" if spec.is_encoder_decoder
              else f"decoder · {spec.n_layers} layers")
    about = textwrap.wrap(spec.description, 62)
    table_ax.text(0.15, height - 0.4, spec.name, fontsize=15, fontweight="bold", va="top")
    summary = [*about, f"{family} · d_model {spec.d_model} · {spec.n_heads} heads",
               f"{total:,} parameters · context {spec.context_length} · vocabulary {spec.vocab_size:,}"]
    table_ax.text(0.15, height - 0.85, "\n".join(summary), fontsize=9.5, va="top", linespacing=1.5)
    draw_parameter_table(table_ax, rows, top=height - 1.25 - 0.2 * len(summary))
    return figure
