"""Built-in pictures of positional schemes, drawn through the ``zoo_positional_picture`` hook.

A scheme is drawn from what it does through the three
:class:`zoo.PositionalScheme` methods, so learned, sinusoidal, rotary, ALiBi
and none — and any third-party scheme that brings no picture of its own — are shown the
way the literature draws them:

* added to the token embeddings (learned, sinusoidal): the table as a heat map,
  position × dimension, and the dot-product similarity between positions;
* rotating queries and keys (rotary): an all-ones query rotated at each position, and
  q·k between positions and against their distance (the long-term decay of Su et al.,
  2021, figure 2);
* a bias on attention scores (ALiBi): the bias matrix of each head and the bias against
  distance (Press et al., 2022, figure 3).

This plugin runs last (``trylast``), so a plugin's own picture of its scheme wins.
Matplotlib is imported only when a picture is drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from zoo import hookimpl

WIDTH = 13.0  # inches; every row of the picture spans the full width
ROW_HEIGHT = 4.2  # an embedding or rotation row
HEAD_CELL = 2.2  # one head's bias matrix
TITLE_HEIGHT = 0.9  # the zoo's suptitle


@dataclass
class PositionalEffects:
    """What a scheme does to ``length`` positions; None where it does nothing."""

    table: torch.Tensor | None  # (L, D) added to the token embeddings
    rotated: torch.Tensor | None  # (L, hd) an all-ones query rotated to each position
    scores: torch.Tensor | None  # (L, L) q_m · k_n / hd for all-ones q and k
    bias: torch.Tensor | None  # (H, L, L) added to attention scores; NaN where masked
    causal: bool


def positional_effects(scheme, spec, length: int) -> PositionalEffects:
    """Probe ``scheme`` through ``embed``, ``rotate`` and ``attention_bias`` at positions 0..length-1."""
    causal = not spec.is_encoder_decoder
    param = next(scheme.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        positions = torch.arange(length, device=device)[None]  # (1, L)
        zeros = torch.zeros(1, length, spec.d_model, device=device)
        table = scheme.embed(zeros, positions)[0].float()  # (L, D)
        ones = torch.ones(1, 1, length, spec.head_dim, device=device)  # (B=1, H=1, L, hd)
        q, k = scheme.rotate(ones, ones.clone(), positions)
        rotated = None if torch.equal(q, ones) else q[0, 0].float()  # (L, hd)
        scores = None if rotated is None else (q[0, 0] @ k[0, 0].T).float() / spec.head_dim  # (L, L)
        index = torch.arange(length, device=device)
        bias = scheme.attention_bias(index, index, causal)
        if bias is not None:
            bias = bias.float().expand(1, -1, length, length)[0].clone()  # (H, L, L)
            if causal:
                bias.masked_fill_(torch.ones(length, length, dtype=torch.bool, device=device).triu(1), math.nan)
    return PositionalEffects(
        table=table.cpu() if bool(table.abs().max() > 0) else None,
        rotated=None if rotated is None else rotated.cpu(),
        scores=None if scores is None else scores.cpu(),
        bias=None if bias is None else bias.cpu(),
        causal=causal,
    )


def draw_embedding_row(subfigure, table: torch.Tensor) -> None:
    """Heat map of the added table (position × dimension) and p_i · p_j between positions."""
    limit = float(table.abs().max())
    ax_table, ax_similarity = subfigure.subplots(1, 2, width_ratios=(1.4, 1))
    image = ax_table.imshow(table.numpy(), aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit,
                            interpolation="nearest")
    ax_table.set(title="added to the token embeddings", xlabel="embedding dimension", ylabel="position")
    subfigure.colorbar(image, ax=ax_table, label="value")
    similarity = table @ table.T  # (L, L)
    image = ax_similarity.imshow(similarity.numpy(), cmap="viridis", interpolation="nearest")
    ax_similarity.set(title="dot-product similarity between positions", xlabel="position j", ylabel="position i")
    subfigure.colorbar(image, ax=ax_similarity, label="$p_i \\cdot p_j$")


def draw_rotation_row(subfigure, rotated: torch.Tensor, scores: torch.Tensor) -> None:
    """The rotated all-ones query per position, q_m·k_n between positions, and q·k against distance."""
    ax_rotated, ax_scores, ax_decay = subfigure.subplots(1, 3, width_ratios=(1.2, 1, 1.1))
    image = ax_rotated.imshow(rotated.numpy(), aspect="auto", cmap="RdBu_r", vmin=-1.5, vmax=1.5,
                              interpolation="nearest")
    ax_rotated.set(title="all-ones query, rotated to each position", xlabel="head dimension", ylabel="position")
    subfigure.colorbar(image, ax=ax_rotated, label="component")
    image = ax_scores.imshow(scores.numpy(), cmap="viridis", interpolation="nearest")
    ax_scores.set(title="$q_m \\cdot k_n$ / head_dim (q = k = ones)", xlabel="key position n",
                  ylabel="query position m")
    subfigure.colorbar(image, ax=ax_scores, label="score")
    length = scores.shape[0]
    decay = [float(scores.diagonal(-d).mean()) for d in range(length)]  # mean over pairs m - n = d
    ax_decay.plot(range(length), decay, color="tab:blue")
    ax_decay.axhline(0.0, color="grey", linewidth=0.8)
    ax_decay.set(title="score against distance", xlabel="distance m − n", ylabel="$q \\cdot k$ / head_dim")
    ax_decay.grid(alpha=0.3)


def head_grid(n_heads: int) -> tuple[int, int]:
    """Rows and columns for one panel per head: at most 4 columns, rows as full as possible."""
    rows = math.ceil(n_heads / 4)
    return rows, math.ceil(n_heads / rows)


def draw_bias_row(subfigure, bias: torch.Tensor, causal: bool) -> None:
    """The bias matrix of every head (each with its own colour scale, as slopes differ by
    orders of magnitude), and each head's bias against query-key distance."""
    import matplotlib

    n_heads, length, _ = bias.shape
    grid, ax_line = subfigure.subfigures(1, 2, width_ratios=(2.6, 1))
    rows, columns = head_grid(n_heads)
    axes = grid.subplots(rows, columns, squeeze=False)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    for h, ax in enumerate(axes.flat):
        if h >= n_heads:
            ax.set_axis_off()
            continue
        image = ax.imshow(bias[h].numpy(), cmap=cmap, aspect="auto", interpolation="nearest")
        ax.set_title(f"head {h}", fontsize=9)
        ax.tick_params(labelsize=7)
        if h % columns == 0:
            ax.set_ylabel("query position", fontsize=8)
        if h + columns >= n_heads:
            ax.set_xlabel("key position", fontsize=8)
        colorbar = grid.colorbar(image, ax=ax)
        colorbar.ax.tick_params(labelsize=7)
    grid.suptitle("bias added to attention scores, per head" + (" (future keys masked: white)" if causal else ""),
                  fontsize=11)
    ax = ax_line.subplots()
    distance = torch.arange(length)
    row = bias[:, -1, :].flip(-1) if causal else bias[:, 0, :]  # (H, L): bias at distance 0..L-1
    colors = matplotlib.colormaps["plasma"](torch.linspace(0, 0.85, n_heads).numpy())
    for h in range(n_heads):
        ax.plot(distance.numpy(), row[h].numpy(), color=colors[h], label=f"head {h}")
    ax.set(title="bias against distance", xlabel="query-key distance", ylabel="bias")
    ax.grid(alpha=0.3)
    if n_heads <= 12:
        ax.legend(fontsize=7, ncols=2)


def draw_no_effect(subfigure, name: str) -> None:
    """A scheme that changes nothing: say so, rather than draw empty axes."""
    ax = subfigure.subplots()
    ax.set_axis_off()
    ax.text(0.5, 0.5, f"'{name}' adds no positional information:\n"
                      "token embeddings, queries, keys and attention scores are left unchanged.",
            ha="center", va="center", fontsize=12, transform=ax.transAxes)


@hookimpl(trylast=True)
def zoo_positional_picture(scheme, spec, length, figure):
    """Draw any scheme from its effects: one row per effect it has."""
    effects = positional_effects(scheme, spec, length)
    rows = []
    if effects.table is not None:
        rows.append((ROW_HEIGHT, lambda sub: draw_embedding_row(sub, effects.table)))
    if effects.rotated is not None:
        rows.append((ROW_HEIGHT, lambda sub: draw_rotation_row(sub, effects.rotated, effects.scores)))
    if effects.bias is not None:
        head_rows, _ = head_grid(effects.bias.shape[0])
        rows.append((HEAD_CELL * head_rows + 0.8, lambda sub: draw_bias_row(sub, effects.bias, effects.causal)))
    if not rows:
        rows.append((2.0, lambda sub: draw_no_effect(sub, spec.positional.type)))
    heights = [height for height, _ in rows]
    figure.set_size_inches(WIDTH, sum(heights) + TITLE_HEIGHT)
    subfigures = figure.subfigures(len(rows), 1, height_ratios=heights, squeeze=False)[:, 0]
    for subfigure, (_, draw) in zip(subfigures, rows):
        draw(subfigure)
    return True
