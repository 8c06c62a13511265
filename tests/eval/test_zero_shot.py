"""Zero-shot classification (openradio.eval.zero_shot, `openradio zero-shot`) end to end on real photographs,
tiny checkpoints and tiny random text towers."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _evalutils import make_image_folder, make_tiny_text_model, save_tiny_text_tower

from openradio.eval.zero_shot import (
    build_classifier,
    classifier_cache_key,
    get_templates,
    zero_shot_classifier,
    zero_shot_logits,
)
from openradio.model.text import TextTower, attach_text_tower

CLASSES = ("astronaut", "chelsea", "coffee", "rocket")
RESOLUTIONS = (32, 64)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("zs") / "images", classes=CLASSES, variants=range(4))


@pytest.fixture(scope="module")
def text_files(tmp_path_factory) -> tuple[Path, Path]:
    return save_tiny_text_tower(tmp_path_factory.mktemp("text"), seed=7)


def _direct_classifier(tower_model, classnames, templates):
    """Per class: mean of the normalised prompt embeddings, normalised; one prompt at a time."""
    import open_clip

    tok = open_clip.tokenizer.SimpleTokenizer(context_length=tower_model.context_length)
    cols = []
    with torch.no_grad():
        for c in classnames:
            embs = [
                F.normalize(tower_model.encode_text(tok([t(c) if callable(t) else t.format(c)]))[0], dim=-1)
                for t in templates
            ]
            cols.append(F.normalize(torch.stack(embs).mean(0), dim=-1))
    return torch.stack(cols, dim=1)


def test_templates():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    assert len(get_templates("openai")) == len(OPENAI_IMAGENET_TEMPLATES) == 80
    assert len(get_templates("simple")) == len(SIMPLE_IMAGENET_TEMPLATES)
    assert get_templates(["a {} photo"]) == ["a {} photo"]
    with pytest.raises(ValueError, match="placeholder"):
        get_templates(["no placeholder"])
    with pytest.raises(ValueError, match="unknown template set"):
        get_templates("fancy")


def test_classifier_matches_direct_computation():
    templates = get_templates("simple") + ["a {} in a picture"]  # open_clip lambdas and a plain string
    adaptor = torch.nn.Linear(2, 2)
    attach_text_tower(adaptor, {}, model=make_tiny_text_model(seed=2))
    clf = build_classifier(adaptor.tokenizer, adaptor.encode_text, CLASSES, templates, batch_size=3, progress=False)
    want = _direct_classifier(make_tiny_text_model(seed=2), CLASSES, templates)
    assert clf.shape == (32, len(CLASSES))
    torch.testing.assert_close(clf, want, rtol=1e-5, atol=1e-6)
    # logits are cosine similarities of the normalised summary with each class embedding
    s = torch.randn(5, 32)
    torch.testing.assert_close(zero_shot_logits(s, clf), F.normalize(s, dim=-1) @ want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="does not belong"):
        zero_shot_logits(torch.randn(2, 31), clf)


def test_classifier_cache_reused_and_keyed(tmp_path, monkeypatch):
    calls = []
    orig = TextTower.encode_text

    def counting(self, tokens, normalize=False):
        calls.append(tokens.shape[0])
        return orig(self, tokens, normalize=normalize)

    monkeypatch.setattr(TextTower, "encode_text", counting)
    adaptor = torch.nn.Linear(2, 2)
    attach_text_tower(adaptor, {}, model=make_tiny_text_model(seed=4))
    templates = get_templates("simple")
    first = zero_shot_classifier(adaptor, CLASSES, templates, cache_dir=tmp_path, progress=False)
    n_first = len(calls)
    assert n_first > 0 and len(list(tmp_path.glob("*.pt"))) == 1
    second = zero_shot_classifier(adaptor, CLASSES, templates, cache_dir=tmp_path, progress=False)
    assert len(calls) == n_first  # text tower not called again
    assert torch.equal(first, second)
    # other class names, templates or adaptor -> other key -> recomputed
    zero_shot_classifier(adaptor, CLASSES[:3], templates, cache_dir=tmp_path, progress=False)
    assert len(calls) > n_first
    key = classifier_cache_key("m", "clip", templates, CLASSES)
    assert key != classifier_cache_key("m", "siglip", templates, CLASSES)
    assert key != classifier_cache_key("m", "clip", templates[:-1], CLASSES)
    assert key != classifier_cache_key("m2", "clip", templates, CLASSES)


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _zs_argv(ckpt, data, text_files, out, cache, *extra):
    cfg, weights = text_files
    return [
        "zero-shot",
        "--version",
        str(ckpt),
        "--data",
        str(data),
        "--resolutions",
        ",".join(map(str, RESOLUTIONS)),
        "--templates",
        "simple",
        "--text-model",
        str(cfg),
        "--text-weights",
        str(weights),
        "--cache-dir",
        str(cache),
        "--out",
        str(out),
        "--no-progress",
        "--batch-size",
        "5",
        *extra,
    ]


def test_cli_matches_direct_computation_and_reuses_cache(
    tmp_path, tiny_checkpoint, image_folder, text_files, monkeypatch, capsys
):
    import openradio
    from openradio.cli import main
    from openradio.inputs.imageio import load_image, resize_center_crop

    out, cache = tmp_path / "out", tmp_path / "cache"
    assert main(_zs_argv(tiny_checkpoint, image_folder, text_files, out, cache)) == 0
    rows = _read_csv(out / "zero_shot.csv")
    assert [int(r["Resolution"]) for r in rows] == list(RESOLUTIONS)

    # direct computation: text classifier from the saved tiny tower, one image at a time through the model
    reference = make_tiny_text_model()
    reference.load_state_dict(torch.load(text_files[1], weights_only=True))
    clf = _direct_classifier(reference, CLASSES, get_templates("simple"))
    model = openradio.radio_model(str(tiny_checkpoint), adaptor_names=["clip"], progress=False)
    for row, res in zip(rows, RESOLUTIONS):
        c1 = c5 = n = 0
        for label, c in enumerate(CLASSES):
            for p in sorted((image_folder / c).iterdir()):
                x = resize_center_crop(load_image(p), res)[None]
                with torch.no_grad():
                    s = model(x)["clip"].summary
                logits = F.normalize(s, dim=-1) @ clf
                order = logits[0].argsort(descending=True).tolist()
                c1 += order[0] == label
                c5 += label in order[:5]
                n += 1
        assert float(row["Top1"]) == pytest.approx(100.0 * c1 / n, abs=1e-3)
        assert float(row["Top5"]) == pytest.approx(100.0 * c5 / n, abs=1e-3)
        assert int(row["NumImages"]) == n

    md = (out / "zero_shot.md").read_text()
    name = Path(tiny_checkpoint).name.replace(".pth.tar", "")
    assert f"| Resolution | {name} |" in md
    for r in rows:
        assert f"| {r['Resolution']} | {r['Top1']} |" in md

    # second run: the classifier comes from the cache; the text tower is neither loaded nor called
    built = []
    monkeypatch.setattr(TextTower, "encode_text", lambda *a, **k: built.append("encode") or 1 / 0)
    import openradio.model.text as text_mod

    orig_load = text_mod.load_text_tower
    monkeypatch.setattr(text_mod, "load_text_tower", lambda *a, **k: built.append("load") or orig_load(*a, **k))
    capsys.readouterr()
    assert main(_zs_argv(tiny_checkpoint, image_folder, text_files, tmp_path / "out2", cache)) == 0
    assert built == []
    assert _read_csv(tmp_path / "out2" / "zero_shot.csv") == rows


def _fit_clip_head(ckpt_path: Path, image_folder: Path, classifier: torch.Tensor, target_of, out_path: Path) -> Path:
    """Write a copy of the checkpoint whose clip summary head maps every image (at every test resolution)
    exactly onto the text embedding of class ``target_of(label, index_within_class)``.

    The head's last Linear is solved by least squares on the activations feeding it (more unknowns than
    images, so the fit is exact); everything before it (backbone, first head layers) stays as it was.
    """
    import openradio
    from openradio.eval.data import iterate_batches, read_labelled_images

    model = openradio.radio_model(str(ckpt_path), adaptor_names=["clip"], progress=False)
    last = model.adaptors["clip"].head_mlp.final[-1]
    assert isinstance(last, torch.nn.Linear)
    feats = []
    hook = last.register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach().double()))
    data = read_labelled_images(image_folder)
    hidden, targets = [], []
    seen: dict[int, int] = {}
    order = {}
    for i, lbl in enumerate(data.labels):
        order[i] = seen.get(lbl, 0)
        seen[lbl] = order[i] + 1
    for res in RESOLUTIONS:
        for images, labels, idx in iterate_batches(data, res, batch_size=8):
            feats.clear()
            with torch.no_grad():
                model(images)
            hidden.append(feats[0])
            targets += [classifier[:, target_of(int(lab), order[int(i)])].double() for lab, i in zip(labels, idx)]
    hook.remove()
    H = torch.cat(hidden)
    T = torch.stack(targets)
    A = torch.cat([H, torch.ones(len(H), 1, dtype=H.dtype)], dim=1)
    X = torch.linalg.lstsq(A, T, driver="gelsd").solution
    assert (A @ X - T).abs().max() < 1e-6, "clip head fit is not exact"
    W, b = X[:-1].T.float(), X[-1].float()

    chk = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    tidx = next(i for i, t in enumerate(chk["args"].teachers) if t["name"] == "clip")
    replaced = 0
    for sd_name in ("state_dict", "state_dict_ema"):
        sd = chk.get(sd_name)
        if not sd:
            continue
        for key in list(sd):
            for prefix in (f"_heads.{tidx}.", "_heads.clip."):
                if key.startswith(prefix) and key[len(prefix) :] in ("final.2.weight", "final.2.bias"):
                    sd[key] = (W if key.endswith("weight") else b).to(sd[key].dtype)
                    replaced += 1
    assert replaced >= 2
    torch.save(chk, out_path)
    return out_path


@pytest.mark.parametrize("shuffled", [False, True], ids=["matched", "shuffled"])
def test_hand_built_checkpoint_perfect_and_chance(tmp_path, tiny_checkpoint, image_folder, text_files, shuffled):
    """A clip head that sends each class's images to that class's text embedding scores 100% top-1; one that
    sends image j of class c to class (c + j) mod C (exactly one image in C lands right) scores chance, 100/C."""
    from openradio.cli import main

    C = len(CLASSES)
    cfg, weights = text_files
    adaptor = torch.nn.Linear(2, 2)
    attach_text_tower(adaptor, {"model": str(cfg)}, weights=weights)
    clf = build_classifier(adaptor.tokenizer, adaptor.encode_text, CLASSES, get_templates("simple"), progress=False)
    target_of = (lambda c, j: (c + j) % C) if shuffled else (lambda c, j: c)
    ckpt = _fit_clip_head(Path(tiny_checkpoint), image_folder, clf, target_of, tmp_path / "handbuilt.pth.tar")

    # also through the list-file input ("path<TAB>label" with class-name labels)
    listing = tmp_path / "val.tsv"
    listing.write_text("".join(f"{p.resolve()}\t{p.parent.name}\n" for p in sorted(image_folder.rglob("*.png"))))
    out = tmp_path / "out"
    assert main(_zs_argv(ckpt, listing, text_files, out, tmp_path / "cache")) == 0
    rows = _read_csv(out / "zero_shot.csv")
    expected = 100.0 / C if shuffled else 100.0
    assert [float(r["Top1"]) for r in rows] == pytest.approx([expected] * len(RESOLUTIONS), abs=1e-3)
    assert all(float(r["Top5"]) == 100.0 for r in rows)  # only 4 classes


def test_errors(tmp_path, tiny_checkpoint, image_folder, text_files):
    from openradio.cli import main

    # an adaptor without a text tower
    with pytest.raises(ValueError, match="no text tower"):
        zero_shot_classifier(torch.nn.Linear(2, 2), CLASSES, ["a {}"], progress=False)
    # wrong number of class names for the folder: a one-line error, exit code 2
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    assert (
        main(
            _zs_argv(
                tiny_checkpoint, image_folder, text_files, tmp_path / "o", tmp_path / "c", "--classnames", str(names)
            )
        )
        == 2
    )
    assert main(_zs_argv(tiny_checkpoint, tmp_path / "nope", text_files, tmp_path / "o", tmp_path / "c")) == 2
