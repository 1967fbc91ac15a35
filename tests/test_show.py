"""Pictures: positional schemes (and their hook), attention maps, model diagrams."""

from __future__ import annotations

import math
import textwrap
import xml.etree.ElementTree as ET

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import zoo
from conftest import REPO, local_plugin, tiny_overrides
from zoo.core.model_dir import load_model, save_model
from zoo.cli import cli
from zoo.errors import PluginError
from zoo.plugins.pictures import positional_effects
from zoo.plugins.positional.alibi import alibi_slopes
from zoo.plugins.positional.sinusoidal import sinusoid_table
from zoo.show.attention import attention_figure, attention_maps, capture_attention
from zoo.show.model import model_figure, trace_blocks
from zoo.show.positional import fresh_scheme, positional_figure, positional_spec
from zoo.core.spec import load_spec

DPI = 40
TINY_GPT2 = ["--set", "n_layers=2", "--set", "d_model=32", "--set", "attention.n_heads=4", "--set", "mlp.d_ff=64"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
        return image.size


def reported(result) -> tuple[int, int]:
    """The size ``zoo show`` printed: 'wrote PATH (W×H px)'."""
    width, height = result.output.strip().rsplit("(", 1)[1].split()[0].split("×")
    return int(width), int(height)


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output


# --------------------------------------------------------------------------- positional


# figure height in inches for each built-in scheme at 4 heads: rows of the picture + title
POSITIONAL_HEIGHTS = {"learned": 4.2 + 0.9, "sinusoidal": 4.2 + 0.9, "rotary": 4.2 + 0.9,
                      "alibi": 2.2 + 0.8 + 0.9, "none": 2.0 + 0.9}


@pytest.mark.parametrize("scheme", zoo.get_registry().names("positional"))
def test_every_builtin_scheme_gets_a_png_of_the_expected_size(scheme, tmp_path):
    out = tmp_path / f"{scheme}.png"
    result = run("show", "positional", scheme, "--d-model", 32, "--heads", 4, "--length", 16, "--dpi", DPI, "-o", out)
    assert result.exit_code == 0, result.output
    assert png_size(out) == reported(result) == (13 * DPI, round(POSITIONAL_HEIGHTS[scheme] * DPI))
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary left behind


def test_positional_svg_at_a_registered_models_size(tmp_path):
    out = tmp_path / "rope.svg"
    result = run("show", "positional", "rotary", "--model", "gpt2", "--length", 24, "-o", out)
    assert result.exit_code == 0, result.output
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg") and root.get("width") == f"{13 * 72}pt"
    text = out.read_text()
    assert "rotary positions" in text and "d_model 768 · 12 heads of 64" in text


def test_positional_effects_are_the_schemes_own_numbers():
    L = 12
    sinusoidal = positional_spec("sinusoidal", d_model=16, n_heads=4, length=L)
    effects = positional_effects(fresh_scheme(sinusoidal), sinusoidal, L)
    torch.testing.assert_close(effects.table, sinusoid_table(torch.arange(L), 16))
    assert effects.rotated is None and effects.bias is None

    alibi = positional_spec("alibi", d_model=16, n_heads=4, length=L)
    bias = positional_effects(fresh_scheme(alibi), alibi, L).bias  # (H, L, L), causal: NaN above the diagonal
    distance = (torch.arange(L)[:, None] - torch.arange(L)[None, :]).float()
    expected = -alibi_slopes(4)[:, None, None] * distance
    lower = torch.ones(L, L, dtype=torch.bool).tril()
    torch.testing.assert_close(bias[:, lower], expected[:, lower])
    assert bias[:, ~lower].isnan().all()

    rotary = positional_spec("rotary", d_model=16, n_heads=4, length=L)
    effects = positional_effects(fresh_scheme(rotary), rotary, L)
    assert effects.table is None and effects.bias is None
    torch.testing.assert_close(effects.scores.diagonal(), torch.ones(L))  # q·k/hd = 1 at distance 0
    torch.testing.assert_close(effects.scores.diagonal(-3), effects.scores.diagonal(3))  # only distance matters

    none = positional_spec("none", length=L)
    effects = positional_effects(fresh_scheme(none), none, L)
    assert effects.table is None and effects.rotated is None and effects.bias is None


def test_learned_positions_come_from_the_model_directory(tmp_path):
    spec = load_spec("gpt2", tiny_overrides("gpt2"))
    model = zoo.build(spec, seed=3)
    save_model(model, spec, tmp_path / "model")
    out = tmp_path / "wpe.png"
    result = run("show", "positional", "learned", "--model", tmp_path / "model", "--length", 20, "--dpi", DPI, "-o", out)
    assert result.exit_code == 0, result.output
    assert png_size(out) == reported(result)
    loaded = load_model(tmp_path / "model")
    effects = positional_effects(loaded.positional, loaded.spec, 20)
    torch.testing.assert_close(effects.table, model.positional.weight[:20].detach())

    wrong = run("show", "positional", "rotary", "--model", tmp_path / "model", "-o", tmp_path / "x.png")
    assert_one_line_error(wrong, "gpt2 has learned positions, not rotary")
    assert not (tmp_path / "x.png").exists()


def test_learned_positions_from_hugging_face_weights(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from zoo.cli.options import model_from_args

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64))
    hf.save_pretrained(tmp_path / "hf")
    sizes = ["--set", "n_layers=1", "--set", "d_model=32", "--set", "attention.n_heads=2", "--set",
             "context_length=64", "--set", "mlp.d_ff=128"]
    out = tmp_path / "wpe.png"
    result = run("show", "positional", "learned", "--model", "gpt2", *sizes, "--weights", tmp_path / "hf",
                 "--length", 40, "--dpi", DPI, "-o", out)
    assert result.exit_code == 0, result.output
    assert png_size(out) == reported(result)
    spec = load_spec("gpt2", {"n_layers": 1, "d_model": 32, "attention.n_heads": 2, "context_length": 64,
                              "mlp.d_ff": 128})
    model = model_from_args(spec, str(tmp_path / "hf"))
    torch.testing.assert_close(positional_effects(model.positional, spec, 40).table,
                               hf.transformer.wpe.weight[:40].detach())


@pytest.mark.parametrize("args,message", [
    (["nowhere"], "unknown positional 'nowhere'; choose one of: alibi, learned"),
    (["alibi", "--d-model", 30, "--heads", 4], "--d-model 30 is not divisible by --heads 4"),
    (["learned", "--model", "gpt2", "--length", 2000], "--length 2000 is longer than gpt2's context of 1024"),
    (["sinusoidal", "--weights", "hf"], "--weights needs --model"),
    (["sinusoidal", "--set", "positional.base=high"], "positional.base: 'high' is not a number"),
])
def test_positional_bad_arguments(args, message, tmp_path):
    out = tmp_path / "pe.png"
    assert_one_line_error(run("show", "positional", *args, "-o", out), message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["pe.jpg", "pe"])
def test_unknown_picture_format_is_refused(name, tmp_path):
    result = run("show", "positional", "sinusoidal", "-o", tmp_path / name)
    assert_one_line_error(result, "name the output *.png or *.svg")
    assert list(tmp_path.iterdir()) == []


ZIGZAG_PLUGIN = textwrap.dedent('''
    import torch
    import zoo
    from zoo.core.components import PositionalScheme


    class ZigzagPositions(PositionalScheme):
        """Adds +1 at even positions and -1 at odd ones."""

        def embed(self, x, positions):
            return x + (1 - 2 * (positions % 2)).to(x.dtype)[..., None]  # (B, T, D)


    class PlainPositions(ZigzagPositions):
        """The same numbers, with no picture of its own."""


    @zoo.hookimpl
    def zoo_register_components(registry):
        registry.add("positional", "zigzag", ZigzagPositions)
        registry.add("positional", "plain", PlainPositions)


    @zoo.hookimpl
    def zoo_positional_picture(scheme, spec, length, figure):
        if type(scheme) is not ZigzagPositions:
            return None
        ax = figure.subplots()
        signs = scheme.embed(torch.zeros(1, length, 1), torch.arange(length)[None])[0, :, 0]
        ax.plot(signs.numpy())
        ax.set(title="zigzag, drawn by its own plugin", xlabel="position", ylabel="sign")
        figure.set_size_inches(6, 3)
        return True
''')


@pytest.fixture
def zigzag_plugin(fresh_registry, tmp_path):
    return local_plugin(tmp_path, "zigzag.py", ZIGZAG_PLUGIN)


def test_a_positional_plugin_draws_its_own_picture(zigzag_plugin, tmp_path):
    spec = positional_spec("zigzag", d_model=8, n_heads=2, length=10)
    figure = positional_figure(fresh_scheme(spec), spec, 10)
    assert [ax.get_title() for ax in figure.axes] == ["zigzag, drawn by its own plugin"]
    assert "zigzag positions: Adds +1 at even positions" in figure.get_suptitle()

    # a scheme whose plugin brings no picture is drawn by the built-in one, from its effects
    spec = positional_spec("plain", d_model=8, n_heads=2, length=10)
    figure = positional_figure(fresh_scheme(spec), spec, 10)
    assert "added to the token embeddings" in [ax.get_title() for ax in figure.axes]

    out = tmp_path / "zigzag.png"
    result = run("--plugin", zigzag_plugin, "show", "positional", "zigzag", "--length", 10, "--dpi", DPI, "-o", out)
    assert result.exit_code == 0, result.output
    assert png_size(out) == reported(result) == (6 * DPI, 3 * DPI)


def test_a_failing_picture_plugin_is_one_line(fresh_registry, tmp_path):
    local_plugin(tmp_path, "broken_picture.py", "import zoo\n\n@zoo.hookimpl\ndef zoo_positional_picture(scheme, spec, length, figure):\n"
                 "    raise ValueError('no ink')\n")
    spec = positional_spec("sinusoidal", length=8)
    with pytest.raises(PluginError, match="picture of positional scheme 'sinusoidal' failed: ValueError: no ink"):
        positional_figure(fresh_scheme(spec), spec, 8)


# --------------------------------------------------------------------------- attention


def tiny_decoder(**extra):
    return zoo.build("gpt2", seed=0, **tiny_overrides(None, vocab_size=50257, **extra))


def test_causal_attention_is_zero_above_the_diagonal():
    model = tiny_decoder()
    maps = attention_maps(model, "The cat sat on the mat")
    T = len(maps.query_tokens)
    assert maps.query_tokens == ["The", "cat", "sat", "on", "the", "mat"] == maps.key_tokens
    assert maps.weights.shape == (2, 4, T, T)
    assert bool((maps.weights.triu(1) == 0).all())  # exactly zero: no query sees a later token
    assert bool((maps.weights[..., torch.ones(T, T, dtype=torch.bool).tril()] > 0).all())  # the past is seen
    torch.testing.assert_close(maps.weights.sum(-1), torch.ones(2, 4, T))


@pytest.mark.parametrize("positional,kv_heads", [("alibi", 2), ("rotary", None)])
def test_captured_weights_are_softmax_of_scaled_scores(positional, kv_heads):
    model = tiny_decoder(positional=positional, **{"attention.n_kv_heads": kv_heads})
    ids = torch.randint(0, 50257, (1, 7), generator=torch.Generator().manual_seed(0))
    seen = []
    attn = model.stack.h[1].attn
    original = attn.attend
    attn.attend = lambda q, k, v, mask, is_causal: seen.append((q, k, mask, is_causal)) or original(q, k, v, mask, is_causal)
    with torch.no_grad():
        plain = model(ids)
        with capture_attention(model) as records:
            captured = model(ids)
    del attn.attend
    torch.testing.assert_close(captured, plain)  # capturing changes nothing
    assert all("attend" not in m.__dict__ for m in model.modules())  # and leaves nothing behind
    q, k, mask, is_causal = seen[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    if is_causal:
        scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    elif mask is not None:
        scores = scores + mask if mask.dtype != torch.bool else scores.masked_fill(~mask, float("-inf"))
    layer1 = next(r for r in records if r.module == "stack.h.1.attn")
    torch.testing.assert_close(layer1.weights, scores.softmax(-1), atol=1e-6, rtol=1e-5)


COSINE_PLUGIN = textwrap.dedent('''
    import torch.nn.functional as F
    import zoo
    from zoo.plugins.attention.multi_head import MultiHeadAttention


    class CosineAttention(MultiHeadAttention):
        def attend(self, q, k, v, mask, is_causal):
            q = F.normalize(q, dim=-1) * 10.0  # (B, H, T, hd)
            k = F.normalize(k, dim=-1)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=1.0)


    @zoo.hookimpl
    def zoo_register_components(registry):
        registry.add("attention", "cosine", CosineAttention)
''')


def test_a_plugins_own_attend_is_what_gets_captured(fresh_registry, tmp_path):
    local_plugin(tmp_path, "cosine.py", COSINE_PLUGIN)
    model = tiny_decoder(attention="cosine")
    maps = attention_maps(model, "The cat sat on the mat")
    with torch.no_grad():
        h = model.positional.embed(model.wte(torch.tensor([[464, 3797, 3332, 319, 262, 2603]])), torch.arange(6)[None])
        q, k, _ = model.stack.h[0].attn.c_attn(model.stack.h[0].ln_1(h)).split(32, dim=-1)
    q = torch.nn.functional.normalize(q.view(1, 6, 4, 8).transpose(1, 2), dim=-1)  # (B, H, T, hd)
    k = torch.nn.functional.normalize(k.view(1, 6, 4, 8).transpose(1, 2), dim=-1)
    scores = (10.0 * q @ k.transpose(-2, -1)).masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(maps.weights[0], scores.softmax(-1)[0], atol=1e-6, rtol=1e-5)


def test_attention_command_writes_one_grid_per_layer(tmp_path):
    out = tmp_path / "attention.png"
    result = run("show", "attention", "gpt2", *TINY_GPT2, "The cat sat on the mat", "--dpi", DPI, "-o", out)
    assert result.exit_code == 0, result.output
    assert png_size(out) == reported(result)
    maps = attention_maps(tiny_decoder(), "The cat sat on the mat")
    maps.notes.append("random init, seed 0")  # as the command adds
    figure = attention_figure(maps)
    assert len(figure.axes) == 2 * 4 + 1  # layers × heads, and the colour bar
    assert reported(result) == tuple(int(s * DPI) for s in figure.get_size_inches())

    one = tmp_path / "one.svg"
    result = run("show", "attention", "gpt2", *TINY_GPT2, "The cat sat", "--layer", 1, "--head", "mean", "-o", one)
    assert result.exit_code == 0, result.output
    root = ET.parse(one).getroot()
    assert root.tag.endswith("svg") and round(float(root.get("width").removesuffix("pt"))) == reported(result)[0]
    assert "layer 1 · mean of heads" in one.read_text()


@pytest.mark.parametrize("args,message", [
    (["--layer", 2], "--layer 2 is out of range: the model has 2 layers (0-1)"),
    (["--head", 4], "--head 4 is out of range: each layer has 4 heads (0-3)"),
    (["--head", "first"], "--head 'first': give a head index (0-3) or 'mean'"),
    (["--kind", "cross"], "gpt2 is a decoder; it has only decoder self-attention"),
    (["--target", "Il gatto"], "--target is for translation models"),
])
def test_attention_bad_arguments_leave_no_file(args, message, tmp_path):
    out = tmp_path / "attention.png"
    result = run("show", "attention", "gpt2", *TINY_GPT2, "The cat sat", *args, "-o", out)
    assert_one_line_error(result, message)
    assert list(tmp_path.iterdir()) == []


SENTENCES = [("the cat sat on the mat", "il gatto era sul tappeto"), ("the dog sat", "il cane era seduto"),
             ("the cat is here", "il gatto è qui"), ("a dog and a cat", "un cane e un gatto")] * 3


@pytest.fixture(scope="module")
def translation_run(tmp_path_factory):
    """A run directory as 'zoo train' writes it: a tiny model, its spec and tokenizer.json."""
    from zoo.translation.vocabulary import Vocabulary

    english, italian = zip(*SENTENCES)
    vocabulary = Vocabulary.train(english, italian, vocab_size=60)
    spec = load_spec("transformer-en-it-small", tiny_overrides("transformer-en-it-small", vocab_size=vocabulary.size))
    directory = tmp_path_factory.mktemp("runs") / "en-it"
    save_model(zoo.build(spec, seed=0), spec, directory)
    vocabulary.save(directory)
    return directory


def test_translation_cross_attention_aligns_source_and_target(translation_run):
    model = load_model(translation_run)
    maps = attention_maps(model, "the cat sat", translation_run, target="il gatto era")
    assert maps.kind == "cross"
    assert maps.key_tokens[-1] == "</s>" and maps.query_tokens[-1] == "</s>"
    S, T = len(maps.key_tokens), len(maps.query_tokens)
    assert maps.weights.shape == (2, 4, T, S)  # decoder layers × heads × target × source
    torch.testing.assert_close(maps.weights.sum(-1), torch.ones(2, 4, T))

    decoder = attention_maps(model, "the cat sat", translation_run, kind="decoder", target="il gatto era")
    assert decoder.key_tokens[0] == "<s>" and bool((decoder.weights.triu(1) == 0).all())
    encoder = attention_maps(model, "the cat sat", translation_run, kind="encoder")
    assert encoder.weights.shape[-1] == encoder.weights.shape[-2] == S
    assert bool((encoder.weights.triu(1) > 0).any())  # the encoder sees the whole source

    greedy = attention_maps(model, "the cat sat", translation_run, max_tokens=4)
    assert greedy.notes[0].startswith("greedy translation") and len(greedy.query_tokens) <= 4


def test_translation_attention_command(translation_run, tmp_path):
    out = tmp_path / "alignment.png"
    result = run("show", "attention", translation_run, "the dog sat on the mat", "--max-tokens", 6, "--head", "mean",
                 "--dpi", DPI, "-o", out)
    assert result.exit_code == 0, result.output
    assert png_size(out) == reported(result)
    result = run("show", "attention", "transformer-en-it-small", "the dog", "-o", tmp_path / "x.png")
    assert_one_line_error(result, "give its run directory (with tokenizer.json)")


# --------------------------------------------------------------------------- model


def test_model_diagram_svg_allocates_no_weights(tmp_path, monkeypatch):
    import zoo.show.model

    assembled = []
    real = zoo.show.model.assemble
    monkeypatch.setattr(zoo.show.model, "assemble", lambda spec: assembled.append(real(spec)) or assembled[-1])
    out = tmp_path / "model.svg"
    result = run("show", "model", "gpt2-medium", "-o", out)
    assert result.exit_code == 0, result.output
    assert all(p.is_meta for p in assembled[0].parameters())
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg") and round(float(root.get("width").removesuffix("pt"))) == reported(result)[0]
    text = out.read_text()
    for label in ("24 × pre_norm block", "attn: multi_head", "mlp: gelu_tanh", "positional: learned",
                  "final norm: layer_norm", "LM head", "354,823,168"):
        assert label in text


def test_encoder_decoder_diagram_png(tmp_path):
    out = tmp_path / "transformer.png"
    result = run("show", "model", "transformer-en-it-small", "--dpi", DPI, "-o", out)
    assert result.exit_code == 0, result.output
    assert png_size(out) == reported(result)
    figure = model_figure(load_spec("transformer-en-it-small"))
    assert reported(result) == tuple(int(s * DPI) for s in figure.get_size_inches())
    texts = {t.get_text() for ax in figure.axes for t in ax.texts}
    assert {"crossattention: cross", "memory", "source token ids", "target token ids"} <= texts


def layout(block: str) -> list:
    spec = load_spec("gpt2", tiny_overrides("gpt2", block=block))
    nodes = trace_blocks(zoo.core.meta.assemble(spec), spec)["decoder"]
    return [("add", n.skip_from) if n.is_add else tuple(s.attr for s in n.sublayers) for n in nodes]


def test_block_layouts_are_traced_as_they_run():
    # pre-norm: x + attn(ln_1(x)), then + mlp(ln_2(.)); the second residual leaves from the first add
    assert layout("pre_norm") == [("ln_1",), ("attn",), ("add", -1), ("ln_2",), ("mlp",), ("add", 2)]
    # post-norm: ln_1(x + attn(x)); its residual leaves after the norm
    assert layout("post_norm") == [("attn",), ("add", -1), ("ln_1",), ("mlp",), ("add", 2), ("ln_2",)]
    # parallel: attention and MLP read the same normalised input and meet in one add
    assert layout("parallel") == [("ln_1",), ("attn", "mlp"), ("add", -1)]


def test_show_model_draws_a_spec_too_deep_to_assemble(tmp_path):
    """A billion layers: one layer per stack is drawn, the counts come from shapes."""
    out = tmp_path / "deep.png"
    result = CliRunner().invoke(cli, ["show", "model", "gpt2", "--set", "n_layers=1000000000", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.stat().st_size > 10_000


def docs_attention_example() -> str:
    """The attention plugin docs/plugins.md shows, as written there (it calls SDPA itself)."""
    doc = (REPO / "docs" / "plugins.md").read_text()
    start = doc.index("# unfused_attention.py")
    return doc[start:doc.index("```", start)]


def test_the_function_mode_records_what_the_identity_trick_records():
    """The two capture paths agree on zoo's own attention: its attend() with v = I, and the
    weights computed from the arguments of the SDPA call inside it."""
    from zoo.show.attention import FunctionRecorder

    model = tiny_decoder(positional="alibi", **{"attention.n_kv_heads": 2}).eval()
    ids = torch.tensor([[464, 3797, 3332, 319, 262, 2603]])
    with torch.no_grad(), capture_attention(model) as by_identity:
        model(ids)
    records = []
    recorder = FunctionRecorder(records)
    hooks = [h for i, block in enumerate(model.stack.h) for h in (
        block.attn.register_forward_pre_hook(recorder.enter(f"stack.h.{i}.attn")),
        block.attn.register_forward_hook(recorder.leave))]
    with torch.no_grad(), recorder:
        model(ids)
    for hook in hooks:
        hook.remove()
    assert [r.module for r in records] == [r.module for r in by_identity] == ["stack.h.0.attn", "stack.h.1.attn"]
    for mine, reference in zip(records, by_identity):
        torch.testing.assert_close(mine.weights, reference.weights, atol=1e-6, rtol=1e-5)


SOFTMAX_PLUGIN = textwrap.dedent('''
    import math

    import torch
    from torch import nn

    import zoo


    class ByHand(zoo.Attention):
        """Self-attention written out: its own forward, softmax(QKᵀ/√d + causal mask) V."""

        def __init__(self, spec, options, layer_index=0):
            super().__init__(spec, options, layer_index)
            self.n_heads = options.n_heads
            self.qkv = nn.Linear(spec.d_model, 3 * spec.d_model)
            self.out = nn.Linear(spec.d_model, spec.d_model)

        def forward(self, x, ctx):
            B, T, D = x.shape
            q, k, v = (t.view(B, T, self.n_heads, -1).transpose(1, 2) for t in self.qkv(x).split(D, dim=-1))
            if ctx.cache is not None:
                k, v = ctx.cache.update(self.layer_index, k, v)
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            future = torch.ones(T, k.shape[2], dtype=torch.bool).triu(k.shape[2] - T + 1)
            weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
            return self.out((weights @ v).transpose(1, 2).reshape(B, T, D))


    @zoo.hookimpl
    def zoo_register_components(registry):
        registry.add("attention", "by_hand", ByHand)
''')


@pytest.mark.parametrize("plugin, name", [(docs_attention_example(), "unfused"), (SOFTMAX_PLUGIN, "by_hand")],
                         ids=["docs-example-calling-sdpa", "softmax-written-out"])
def test_an_attention_plugin_with_its_own_forward_is_drawn(fresh_registry, tmp_path, plugin, name):
    local_plugin(tmp_path, f"{name}.py", plugin)
    model = tiny_decoder(attention=name).eval()
    maps = attention_maps(model, "The cat sat on the mat")
    assert maps.weights.shape == (2, 4, 6, 6)
    assert bool((maps.weights.triu(1) == 0).all())  # causal, as the plugin computes it
    torch.testing.assert_close(maps.weights.sum(-1), torch.ones(2, 4, 6))
    out = tmp_path / "attention.png"
    result = run("--plugin", tmp_path / f"{name}.py", "show", "attention", "gpt2", *TINY_GPT2, "--set",
                 f"attention={name}", "The cat sat on the mat", "--dpi", DPI, "-o", out)
    assert result.exit_code == 0, result.output
    assert png_size(out) == reported(result)



def test_a_hugging_face_directory_is_drawn_with_its_own_weights(tmp_path):
    """MODEL may be any directory zoo loads: a Hugging Face checkpoint too (it used to be read as a zoo directory)."""
    hf = tmp_path / "hf"
    result = run("export", "gpt2", *TINY_GPT2, "--seed", "3", "--format", "hf", "-o", hf)
    assert result.exit_code == 0, result.output
    out = tmp_path / "attention.png"
    result = run("show", "attention", hf, "The cat sat", "--dpi", DPI, "-o", out)
    assert result.exit_code == 0, result.output
    assert png_size(out) == reported(result)
    drawn = attention_maps(zoo.load(hf), "The cat sat")
    seeded = attention_maps(tiny_decoder(), "The cat sat")  # seed 0: other weights, other maps
    assert not torch.allclose(drawn.weights, seeded.weights)
    result = run("show", "positional", "learned", "--model", hf, "--dpi", DPI, "-o", tmp_path / "wpe.png")
    assert result.exit_code == 0, result.output
