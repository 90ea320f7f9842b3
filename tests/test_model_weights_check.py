"""`spt weights check` and the check at run start name a file's layout, architecture, parameter
count and which of the VPT / SPT papers' files it is, from files written by the test in each
publisher's layout; a run's normalisation and pooling are compared with that file's recipes.

Torch files are written at the real sizes (zero-stride tensors: real names and shapes, a few
hundred KB). .npz and safetensors files cannot be written that cheaply, so their reader is
checked on small files against the shapes the test wrote, and the real sizes go through the
same summary from shapes."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from official_layouts import jax_shapes, pos_embed, timm_shapes, timm_state, wrap, write_npz
from spt_dist.cli import main as spt
from spt_dist.config import load_config
from spt_dist.config.registry import BACKBONES
from spt_dist.model import build_backbone, weights_hash
from spt_dist.model.identify import file_md5, identify, md5_finding
from spt_dist.model.known import KNOWN
from spt_dist.model.sincos import mae_sincos, mocov3_sincos
from spt_dist.model.summary import Summary, npz_summary, state_summary, summarize
from spt_dist.model.weights_check import check_weights, log_weights_check
from spt_dist.rundir.metrics import MetricsLog

MICRO = dict(patch=4, width=32, depth=3, heads=2, mlp=128, tokens=17)  # vit_micro_p4_16


def _arch(k):
    return dict(patch=k.patch, width=k.width, depth=k.depth, heads=k.heads, mlp=k.mlp, tokens=k.tokens)


def _timm_params(patch, width, depth, heads, mlp, tokens):
    """Independent reference: the parameters of timm's own backbone module (no head)."""
    return sum(int(np.prod(s)) for _, s in timm_shapes(patch, width, depth, heads, mlp, tokens, None))


def _entry(name):
    return next(k for k in KNOWN if k.name == name)


def test_sincos_tables_equal_the_official_codes():
    from official_layouts import mae_reference_sincos, mocov3_reference_sincos

    for dim, grid in ((768, 14), (1280, 16), (32, 4)):
        np.testing.assert_allclose(mae_sincos(dim, grid), mae_reference_sincos(dim, grid)[0, 1:], atol=1e-5)
        np.testing.assert_allclose(mocov3_sincos(dim, grid), mocov3_reference_sincos(dim, grid)[0, 1:], atol=1e-5)
    assert not np.allclose(mae_sincos(768, 14), mocov3_sincos(768, 14), atol=1e-2)  # tellable apart


def test_npz_reader_reads_the_jax_layout_the_loader_loads(tmp_path):
    shapes = jax_shapes(**MICRO, head_classes=21843 // 1000, pre_logits=True)
    path = tmp_path / "ViT-micro.npz"
    write_npz(path, shapes, pos_embed("learned", 32, 17))
    s = summarize(str(path))
    assert (s.container, s.layout, s.patch, s.width, s.depth, s.heads, s.mlp, s.img_size) == \
        ("npz", "jax-vit", 4, 32, 3, 2, 128, 16)
    assert (s.head_classes, s.pre_logits, s.pos_embed, s.class_token) == (21, True, "learned", True)
    assert s.params == _timm_params(**MICRO)
    # The same summary as from the shapes alone (the path the real sizes take below) ...
    again = npz_summary(Summary("x", 0, "npz", "unknown"), shapes, lambda _: pos_embed("learned", 32, 17))
    assert dataclasses.replace(again, path=s.path, size=s.size) == s
    # ... and a layout the loader reads: timm's npz reader fills every backbone tensor from it.
    build_backbone("vit_micro_p4_16", checkpoint=path)
    m = identify(s)  # no papers' file, and no papers' file of these shapes: the registry's micro backbone
    assert (m.entry, m.backbone, m.closest) == (None, "vit_micro_p4_16", None)


def test_safetensors_reader_reads_timm_layout(tmp_path):
    state = timm_state(**MICRO, head_classes=None, real=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    s = summarize(str(tmp_path / "w.safetensors"))
    assert (s.layout, s.patch, s.width, s.depth, s.heads, s.mlp, s.head_classes) == ("timm", 4, 32, 3, None, 128, None)
    assert s.params == _timm_params(**MICRO) and s.pos_embed == "learned"
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    again = state_summary(Summary("x", 0, "safetensors", "unknown"), shapes, None,
                          lambda k: state[k].numpy())
    assert dataclasses.replace(again, path=s.path, size=s.size) == s


@pytest.mark.parametrize("entry", [k for k in KNOWN], ids=lambda k: k.name)
def test_each_official_file_is_named(tmp_path, entry):
    pos = pos_embed(entry.pos_embed, entry.width, entry.tokens)
    if entry.layout == "jax-vit":
        shapes = jax_shapes(**_arch(entry), head_classes=entry.head_classes, pre_logits=entry.pre_logits)
        s = npz_summary(Summary(entry.name, 0, "npz", "unknown"), shapes, lambda _: pos)
        hub = None
    elif entry.layout == "timm":  # timm's Hub copies: model.safetensors under hf-hub:<name>
        state = timm_state(**_arch(entry), head_classes=entry.head_classes, real=False)
        s = state_summary(Summary("model.safetensors", 0, "safetensors", "unknown"),
                          {k: tuple(v.shape) for k, v in state.items()}, None, lambda _: pos)
        hub = entry.name
    else:  # torch files, at the real sizes, through the file reader
        path = tmp_path / entry.name
        torch.save(wrap(entry.layout, timm_state(**_arch(entry), head_classes=entry.head_classes, real=False), pos),
                   path)
        s, hub = summarize(str(path)), None
        assert path.stat().st_size < 2 * 2**20
    m = identify(s, hub)
    assert m.entry is not None and m.entry.name == entry.name and m.also == [], (s, m)
    assert (s.layout, s.width, s.depth, s.patch, s.img_size) == (entry.layout, entry.width, entry.depth, entry.patch,
                                                                 224)
    assert s.params == _timm_params(**_arch(entry))
    assert s.pos_embed == entry.pos_embed


def test_spt_weights_check_names_a_mae_file_and_its_recipes(tmp_path, capsys):
    k = _entry("mae_pretrain_vit_base.pth")
    path = tmp_path / k.name
    torch.save(wrap(k.layout, timm_state(**_arch(k), head_classes=None, real=False),
                    pos_embed(k.pos_embed, k.width, k.tokens)), path)
    assert spt(["weights", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "layout: mae-pretrain:" in out and "known checkpoint: mae_pretrain_vit_base.pth" in out
    assert "patch 16, width 768, depth 12" in out and "85,798,656 in the backbone" in out
    assert "model.name=vit_b16" in out and "set model.checkpoint_format=mae" in out
    assert "recipe VPT:" in out and "recipe SPT:" in out and "mae_head_norm pretrained" in out
    # The test's file is not MAE's: the published md5 prefix tells them apart.
    assert f"md5 {file_md5(str(path))} does not start with the published 8cad7c" in out
    same, text = md5_finding(str(path), dataclasses.replace(k, md5=file_md5(str(path))[:6]))
    assert same and "this is the published file" in text
    assert spt(["weights", "check", str(tmp_path / "missing.pth")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def _mae_run(tmp_path, *overrides):
    k = _entry("mae_pretrain_vit_base.pth")
    path = tmp_path / k.name
    if not path.exists():
        torch.save(wrap(k.layout, timm_state(**_arch(k), head_classes=None, real=False),
                        pos_embed(k.pos_embed, k.width, k.tokens)), path)
    return load_config(None, ["model.name=vit_b16", f"model.checkpoint={path}", "method.name=spt",
                              "method.prompt_length=20", "method.init=random_sample", *overrides])


def test_run_findings_against_the_papers_recipes(tmp_path):
    spt_like = _mae_run(tmp_path, "model.checkpoint_format=mae", "model.mae_head_norm=pretrained")
    report = check_weights(spt_like.model.checkpoint, spt_like, md5=False)
    assert report.warnings == [] and any("as in SPT" in line for line in report.lines)
    assert any("as in VPT" in line for line in check_weights(
        spt_like.model.checkpoint, _mae_run(tmp_path, "model.checkpoint_format=mae"), md5=False).lines)
    half = _mae_run(tmp_path, "model.checkpoint_format=mae", "model.mean=[0.5,0.5,0.5]", "model.std=[0.5,0.5,0.5]")
    (warning,) = check_weights(half.model.checkpoint, half, md5=False).warnings
    assert "normalises with mean [0.5, 0.5, 0.5]" in warning and "model.mean=[0.485, 0.456, 0.406]" in warning
    token = _mae_run(tmp_path, "model.checkpoint_format=mae", "model.pool=token")
    (warning,) = check_weights(token.model.checkpoint, token, md5=False).warnings
    assert "pools token" in warning and "mean_with_prompts" in warning and "set model.pool=mean_with_prompts" in warning
    auto = _mae_run(tmp_path)
    (warning,) = check_weights(auto.model.checkpoint, auto, md5=False).warnings
    assert "set model.checkpoint_format=mae" in warning


def test_timm_copy_of_mae_needs_its_format_and_read_as_timm_is_warned(tmp_path):
    k = _entry("timm/vit_base_patch16_224.mae")
    state = timm_state(**_arch(k), head_classes=None, real=False)
    state["pos_embed"] = torch.from_numpy(pos_embed(k.pos_embed, k.width, k.tokens))
    torch.save(state, tmp_path / "pytorch_model.bin")  # timm's other Hub file name; real shapes, a few KB
    base = ["model.name=vit_b16", f"model.checkpoint={tmp_path / 'pytorch_model.bin'}", "method.name=linear"]
    auto = check_weights(str(tmp_path / "pytorch_model.bin"), load_config(None, base), md5=False)
    assert auto.record["known"] == k.name
    assert "this run cannot read the file with model.checkpoint_format=auto; set model.checkpoint_format=mae" \
        in auto.warnings
    cfg = load_config(None, base + ["model.checkpoint_format=timm"])
    report = check_weights(cfg.model.checkpoint, cfg, md5=False)
    text = " ".join(report.warnings)
    assert "normalises with mean [0.5, 0.5, 0.5]" in text
    assert "pools token" in text and "set model.checkpoint_format=mae" in text


def test_check_at_run_start_logs_warnings_not_errors(tmp_path, capsys):
    cfg = _mae_run(tmp_path, "model.checkpoint_format=mae", "model.pool=token")
    (tmp_path / "run").mkdir()
    log = MetricsLog(tmp_path / "run", enabled=True)
    log_weights_check(cfg, log, 0)
    log.close()
    (event,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert event["event"] == "weights_check" and event["known"] == "mae_pretrain_vit_base.pth"
    assert event["md5"] == "not checked" and len(event["warnings"]) == 1
    assert "spt: warning: weights check: this run pools token" in capsys.readouterr().err
    broken = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=str(tmp_path / "gone.pth")))
    log = MetricsLog(tmp_path / "run", enabled=True)
    log_weights_check(broken, log, 0)  # unreadable: a warning, the run would go on
    log.close()
    assert "could not read" in capsys.readouterr().err


def test_a_micro_backbone_round_trips_and_stays_unknown(tmp_path):
    src = build_backbone("vit_micro_p4_16")
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    report = check_weights(str(tmp_path / "w.safetensors"))
    assert report.record["known"] is None and "model.name=vit_micro_p4_16" in "\n".join(report.lines)
    assert report.record["backbone"] == "vit_micro_p4_16"
    assert weights_hash(build_backbone("vit_micro_p4_16", checkpoint=tmp_path / "w.safetensors")) == weights_hash(src)


@pytest.mark.parametrize("overrides", [["model.checkpoint_format=mae"], ["model.checkpoint_format=timm"]])
def test_the_run_check_reports_from_the_read_file_without_reading_it_again(tmp_path, overrides):
    """read_weights' Checkpoint carries the summary and the detected format: the check built from
    it is the check of the file, and needs no file (here: the file is gone)."""
    from spt_dist.model import read_weights

    cfg = _mae_run(tmp_path, *overrides)  # an MAE pretraining file: auto cannot decide its format
    from_file = check_weights(cfg.model.checkpoint, cfg, md5=False)
    read = dataclasses.replace(read_weights(cfg), state={})
    (tmp_path / "mae_pretrain_vit_base.pth").unlink()
    from_read = check_weights(cfg.model.checkpoint, cfg, md5=False, read=read)
    assert (from_read.lines, from_read.warnings, from_read.record) == \
        (from_file.lines, from_file.warnings, from_file.record)
    assert any("format: not decided by its keys" in line for line in from_read.lines)


ASSETS = Path(__file__).resolve().parents[1] / "spt_dist" / "assets"


@pytest.mark.parametrize("path", sorted(ASSETS.glob("*.safetensors")) + sorted(ASSETS.glob("*.pth")),
                         ids=lambda p: p.name)
def test_the_bundled_backbones_are_named_by_their_registry_entry(path, capsys):
    """Each bundled file is named by the registry backbone it was trained as (in its file name, and
    the model.name its README gives), not by the nearest of the papers' ViT-B/16 files."""
    name = re.search(r"vit_[a-z]+_p\d+_\d+", path.name).group(0)
    s = summarize(str(path))
    b = BACKBONES[name]
    assert (s.patch, s.width, s.depth, s.img_size) == (b.patch_size, b.embed_dim, b.depth, b.img_size)
    m = identify(s)
    assert (m.entry, m.backbone, m.closest) == (None, name, None)
    assert spt(["weights", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"known checkpoint: none of the VPT / SPT files; the shapes of registry backbone {name} " in out
    assert "closest" not in out and "ViT-B" not in out, out


def _timm_file(path, head_classes=None, **arch):
    torch.save(timm_state(**arch, head_classes=head_classes, real=False), path)
    return summarize(str(path))


def test_unknown_shapes_get_the_closest_by_shape_distance(tmp_path, capsys):
    # A 100-wide tiny backbone: the registry's vit_tiny_p7_28 (96 wide, mlp 384) is nearest.
    s = _timm_file(tmp_path / "w100.pth", patch=7, width=100, depth=4, heads=4, mlp=400, tokens=17)
    m = identify(s)
    assert m.entry is None and m.backbone is None
    assert (m.closest.name, m.closest.what) == ("vit_tiny_p7_28", "registry backbone")
    assert m.closest.differs == ["width 100 (96)", "mlp 400 (384)"]
    assert m.closest.distance == pytest.approx(2 * math.log2(100 / 96))
    # Every other candidate is further by the same measure (computed here from the tables).
    def distance(patch, width, depth, mlp, tokens):
        return sum(abs(math.log2(a / b)) for a, b in zip((7, 100, 4, 400, 17), (patch, width, depth, mlp, tokens)))
    others = [distance(b.patch_size, b.embed_dim, b.depth, int(b.embed_dim * b.mlp_ratio),
                       (b.img_size // b.patch_size) ** 2 + (0 if b.no_embed_class else 1 + b.reg_tokens))
              for n, b in BACKBONES.items() if n != "vit_tiny_p7_28"]
    others += [distance(k.patch, k.width, k.depth, k.mlp, k.tokens) for k in KNOWN]
    assert min(others) > m.closest.distance
    assert spt(["weights", "check", str(tmp_path / "w100.pth")]) == 0
    out = capsys.readouterr().out
    assert f"closest: vit_tiny_p7_28 (registry backbone), shape distance {m.closest.distance:.2f} (" in out
    # A ViT-B/16 two blocks short: a papers' file of timm's layout at log2(12 / 10), ahead of the
    # registry's vit_b16 at the same distance.
    m = identify(_timm_file(tmp_path / "b10.pth", patch=16, width=768, depth=10, heads=12, mlp=3072, tokens=197))
    assert m.backbone is None and m.closest.name.startswith("timm/vit_base_patch16_224")
    assert m.closest.distance == pytest.approx(math.log2(12 / 10)) and "depth 10 (12)" in m.closest.differs
    # ViT-B/16 shapes with a 100-class head: registry vit_b16, and the papers' file of these shapes.
    m = identify(_timm_file(tmp_path / "b100.pth", patch=16, width=768, depth=12, heads=12, mlp=3072, tokens=197,
                            head_classes=100))
    assert m.entry is None and m.backbone == "vit_b16"
    assert m.closest.distance == 0 and len(m.closest.differs) == 1
    assert m.closest.differs[0].startswith("head_classes 100 (")


def test_a_file_without_vit_shapes_has_no_closest_entry(tmp_path, capsys):
    """A ResNet's tensors and a ViT without its position table give no shape distance: nothing
    is named as near."""
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)},
               tmp_path / "resnet.pth")
    state = timm_state(patch=7, width=96, depth=4, heads=4, mlp=384, tokens=17, head_classes=None, real=False)
    torch.save({k: v for k, v in state.items() if k != "pos_embed"}, tmp_path / "nopos.pth")
    for name in ("resnet.pth", "nopos.pth"):
        m = identify(summarize(str(tmp_path / name)))
        assert (m.entry, m.backbone, m.closest) == (None, None, None), name
        assert spt(["weights", "check", str(tmp_path / name)]) == 0
        out = capsys.readouterr().out
        assert "closest: none (the file's ViT shapes" in out and "distance inf" not in out, out

