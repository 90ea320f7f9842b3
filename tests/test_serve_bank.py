"""Per-sample prompts and the prompt bank, against independent references: every sample of a
mixed-task batch gets the logits of its own pack run alone through PromptedViT (built by
load_prompt_pack from the file, or directly), gradients reach only the sets used, and every
pack that does not fit the bank is refused while the bank goes on serving.

Tolerance: lengths="group" runs the same operations as PromptedViT on the same rows; only the
batch shape of the matrix products differs (the other tasks' samples are elsewhere), which can
change BLAS's summation order, so 1e-5 (fp32 logits of size ~1-10; a wrong prompt or head
changes them by > 0.1, checked below). lengths="pad" adds masked keys whose softmax weight is
exactly zero but whose presence changes the kernel's summation order: 5e-5.
"""
from __future__ import annotations

import contextlib
import json

import pytest
import torch

from serve_helpers import PACKS, make_assets, png, write_pack, write_packs
from spt_dist.engine.export import PackMismatchError, load_prompt_pack
from spt_dist.model import MultiPromptViT, PromptedViT, PromptSet, PromptStack, build_backbone
from spt_dist.serve import BadImageError, PromptBank, TaskExistsError, TaskNameError, UnknownTaskError
from spt_dist.serve.offline import classify_files, score_shards

ATOL = {"group": 1e-5, "pad": 5e-5}


@contextlib.contextmanager
def _named(what: str):
    """Names the case in a failure of the `with` block it wraps."""
    try:
        yield
    except BaseException as exc:
        exc.add_note(f"case: {what}")
        raise


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.getbasetemp() / "engine_assets")


@pytest.fixture(scope="module")
def packs(assets, tmp_path_factory):
    return write_packs(tmp_path_factory.mktemp("packs"), assets)


def _random_models(backbone):
    torch.manual_seed(0)
    models = []
    for p, deep, pool, c in PACKS.values():
        m = PromptedViT(backbone, c, prompt_length=p, deep=deep, pool=pool).eval()
        with torch.no_grad():  # far from init, so that every set's logits differ clearly
            m.head.weight.normal_()
            m.head.bias.normal_()
            if m.prompts is not None:
                m.prompts.normal_()
        models.append(m)
    return models


@pytest.mark.parametrize("lengths", ["group", "pad"])
@pytest.mark.parametrize("name", ["vit_micro_p4_16", "vit_micro_reg_p4_16"])
def test_each_sample_gets_its_own_sets_forward(name, lengths):
    backbone = build_backbone(name)
    models = _random_models(backbone)
    model = MultiPromptViT(backbone, PromptStack([PromptSet.from_model(m) for m in models], 3, 32), lengths).eval()
    x = torch.randn(30, 3, 16, 16)
    index = torch.arange(30) % len(models)
    index = index[torch.randperm(30, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        out = model(x, index)
        for t, m in enumerate(models):
            rows = (index == t).nonzero().squeeze(1)
            ref = m(x[rows])
            c = ref.shape[1]
            torch.testing.assert_close(out[rows, :c], ref, atol=ATOL[lengths], rtol=1e-5)
            assert torch.isinf(out[rows, c:]).all() and (out[rows, c:] < 0).all()
            # The test can fail: any other set (its first c classes) is far from this one.
            for u, other in enumerate(models):
                if u != t and other.head.out_features >= c:
                    assert (other(x[rows])[:, :c] - ref).abs().max() > 0.1


def test_gradients_reach_exactly_the_sets_a_batch_uses():
    """The packed-training use: a loss over some sets' samples trains those sets as PromptedViT would."""
    backbone = build_backbone("vit_micro_p4_16")
    models = _random_models(backbone)
    stack = PromptStack([PromptSet.from_model(m) for m in models], 3, 32)
    x, y = torch.randn(8, 3, 16, 16), torch.tensor([0, 1, 1, 0, 2, 1, 0, 2])
    index = torch.tensor([2, 3, 2, 3, 2, 3, 3, 2])  # deep5 and deep8 only
    torch.nn.functional.cross_entropy(MultiPromptViT(backbone, stack)(x, index), y, reduction="sum").backward()
    for t in (0, 1, 4, 5):
        assert stack.prompts.grad[t].abs().sum() == 0 and stack.head_weight.grad[t].abs().sum() == 0
    for t in (2, 3):
        m, rows = models[t], (index == t).nonzero().squeeze(1)
        torch.nn.functional.cross_entropy(m(x[rows]), y[rows], reduction="sum").backward()
        p = m.prompt_length
        torch.testing.assert_close(stack.prompts.grad[t, :, :p], m.prompts.grad, atol=1e-5, rtol=1e-4)
        assert stack.prompts.grad[t, :, p:].abs().sum() == 0  # padding learns nothing
        c = m.head.out_features
        torch.testing.assert_close(stack.head_weight.grad[t, :c], m.head.weight.grad, atol=1e-5, rtol=1e-4)


def test_stack_refuses_sets_that_do_not_fit():
    good = PromptSet(torch.zeros(1, 4, 32), torch.zeros(3, 32), torch.zeros(3))
    with pytest.raises(ValueError, match="prompts of shape"):
        PromptStack([good, PromptSet(torch.zeros(1, 4, 16), torch.zeros(3, 32), torch.zeros(3))], 3, 32)
    with pytest.raises(ValueError, match="deep prompts"):
        PromptStack([PromptSet(None, torch.zeros(3, 32), torch.zeros(3), deep=True)], 3, 32)
    with pytest.raises(ValueError, match="depth 4"):
        MultiPromptViT(build_backbone("vit_micro_p4_16"), PromptStack([good], 4, 32))


@pytest.mark.parametrize("lengths", ["group", "pad"])
def test_bank_mixed_batch_equals_each_pack_alone(assets, packs, lengths):
    bank = PromptBank.open(str(assets["backbone"]), packs, lengths=lengths, device="cpu")
    names = list(packs)
    tasks = [names[(i * 5) % len(names)] for i in range(20)]  # every task, interleaved
    images = torch.stack([bank.preprocess(png(i)) for i in range(20)])
    got = bank.logits(images, tasks)
    tops = bank.classify(images, tasks, top_k=2)
    for name, path in packs.items():
        ref_model, meta = load_prompt_pack(path, str(assets["backbone"]))
        rows = [i for i, t in enumerate(tasks) if t == name]
        with torch.no_grad():
            ref = ref_model(images[rows])
        torch.testing.assert_close(torch.stack([got[i] for i in rows]), ref, atol=ATOL[lengths], rtol=1e-5)
        probs = ref.softmax(1)
        for r, i in enumerate(rows):
            best = int(probs[r].argmax())
            assert tops[i][0]["index"] == best and tops[i][0]["label"] == meta["classes"][best]
            assert tops[i][0]["score"] == pytest.approx(float(probs[r, best]), abs=1e-5)
            assert len(tops[i]) == 2 and tops[i][0]["score"] >= tops[i][1]["score"]


def test_bank_refuses_packs_that_do_not_fit_and_keeps_serving(assets, packs, tmp_path):
    bank = PromptBank.open(str(assets["backbone"]), {"deep5": packs["deep5"]})
    image = bank.preprocess(png(0))[None]
    before = bank.logits(image, ["deep5"])[0]
    torch.manual_seed(1)
    from spt_dist.model import save_backbone_weights

    other = save_backbone_weights(build_backbone("vit_micro_p4_16"), tmp_path / "other.safetensors")
    bad = {
        "other weights": (lambda: PromptBank.open(other, {"a": packs["deep5"]}).add("b", packs["deep5"]), "weights"),
        "full": (write_pack(tmp_path / "full.st", assets, 0, False, "token", 3, 9, method="full"), "full fine-tuning"),
        "img_size": (write_pack(tmp_path / "s.st", assets, 2, False, "token", 3, 9, meta={"img_size": "32"}), "img_size"),
        "mean": (write_pack(tmp_path / "m.st", assets, 2, False, "token", 3, 9, meta={"mean": json.dumps([0.1, 0.2, 0.3])}), "mean"),
        "dtype": (write_pack(tmp_path / "d.st", assets, 2, False, "token", 3, 9, meta={"dtype": "bf16"}), "dtype"),
        "shape": (write_pack(tmp_path / "p.st", assets, 4, False, "token", 3, 9, meta={"prompt_length": "5"}), "metadata says"),
        "deep shape": (write_pack(tmp_path / "q.st", assets, 4, False, "token", 3, 9, meta={"deep": "true"}), "shape"),
        "backbone": (write_pack(tmp_path / "b.st", assets, 2, False, "token", 3, 9, meta={"backbone": "vit_tiny_p7_28"}),
                     "backbone"),
    }
    (tmp_path / "junk.st").write_bytes(b"not a safetensors file")
    bad["junk"] = (str(tmp_path / "junk.st"), "not a prompt pack")
    for what, (pack, message) in bad.items():
        with _named(what), pytest.raises(PackMismatchError, match=message):
            pack() if callable(pack) else bank.add(what.replace(" ", "_"), str(pack))
    with pytest.raises(TaskExistsError):
        bank.add("deep5", packs["deep8"])
    with pytest.raises(TaskNameError):
        bank.add("../x", packs["deep8"])
    with pytest.raises(BadImageError):
        bank.preprocess(b"\x89PNG but not really")
    assert [t.name for t in bank.tasks()] == ["deep5"]
    assert torch.equal(bank.logits(image, ["deep5"])[0], before)


def test_bank_adds_replaces_and_removes_while_answering(assets, packs):
    bank = PromptBank.open(str(assets["backbone"]), {k: packs[k] for k in ("linear", "deep8")})
    images = torch.stack([bank.preprocess(png(i)) for i in range(4)])
    bank.add("shallow3", packs["shallow3"])
    deep8 = bank.logits(images[:1], ["deep8"])[0]
    bank.remove("linear")
    out = bank.classify_each(images, ["linear", "deep8", "shallow3", "nope"], 1)
    assert isinstance(out[0], UnknownTaskError) and isinstance(out[3], UnknownTaskError)
    assert out[1][0]["label"].startswith("class_3_") and out[2][0]["label"].startswith("class_1_")
    with pytest.raises(UnknownTaskError, match="linear"):
        bank.logits(images[:1], ["linear"])
    torch.testing.assert_close(bank.logits(images[:1], ["deep8"])[0], deep8, atol=1e-5, rtol=1e-5)
    bank.add("deep8", packs["deep5"], replace=True)  # the same name, another pack
    assert bank.task("deep8").prompt_length == 5 and len(bank.logits(images[:1], ["deep8"])[0]) == 3


def test_offline_scoring_of_several_tasks_in_mixed_batches(assets, packs, tmp_path):
    from spt_dist.config.schema import DataConfig
    from spt_dist.data import EvalData, ShardIndex
    from spt_dist.engine.evaluate import evaluate

    index = ShardIndex.load(str(assets["shards"]))
    three = {k: str(write_pack(tmp_path / f"{k}.safetensors", assets, *PACKS[k][:3], 3, seed, classes=index.classes))
             for seed, k in enumerate(("deep5", "shallow2"))}  # the shards' 3 classes
    bank = PromptBank.open(str(assets["backbone"]), three, device="cpu")
    got = score_shards(bank, {k: str(assets["shards"]) for k in three}, "test", batch_size=7)
    for name, path in three.items():
        model, meta = load_prompt_pack(path, str(assets["backbone"]))
        data = EvalData(DataConfig(root=str(assets["shards"]), preset="small", eval_batch_size=16), index, "test",
                        16, meta["mean"], meta["std"], 0, 1)
        ref = evaluate(model, data, torch.device("cpu"), torch.float32)
        assert got[name]["total"] == 30 and got[name]["correct"] == ref["correct"]
        assert got[name]["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(png(i))
    top = classify_files(bank, [str(f) for f in files], ["deep5", "shallow2", "deep5"], top_k=3)
    assert [len(t) for t in top] == [3, 3, 3] and {c["label"] for c in top[1]} == set(index.classes)
