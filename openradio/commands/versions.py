"""`openradio versions`: the released RADIO versions and whether their weights are already on disk."""

from __future__ import annotations

import argparse
import json

HELP = (
    "list released RADIO versions (backbone, parity-fixture coverage, patch size, preferred resolution, "
    "ViTDet, adaptors, cached locally)"
)
EXAMPLES = """\
  openradio versions
  openradio versions --json | python -m json.tool
  openradio versions --routes

"backbone" is the args.model the release carries (~ = inferred: NVIDIA has not published its
args; the loader always reads the checkpoint's own). "parity" names the official-output fixtures
whose checkpoints take the same construction path (tests/fixtures/), "-" where none does.
"cached" means the checkpoint file is in torch.hub's cache ($TORCH_HOME/hub/checkpoints), so
loading that version needs no download. Any version name works as --version in other commands;
so does the path of a local checkpoint file. --routes lists the ways a model loads (what to pass as
--version) and which inputs each carries: video clips (temporally packed, as the vision encoder of
Nemotron-3-Nano-Omni) come from a checkpoint with a video patch projection, docs/video.md."""

# How a model reaches openradio (what --version takes) and what each route carries. Video clips
# need a checkpoint with a video patch projection; cpe_video_mode works on every route (same model).
ROUTES = [
    dict(
        route="released name",
        example="radio_v2.5-b",
        format="official .pth.tar (torch.hub cache)",
        images=True,
        packed_images=True,
        cpe_video_mode=True,
        video_clips="no (no release has a video projection)",
        swiglu="radio_v2.5-g (DINOv2 student)",
    ),
    dict(
        route="local .pth.tar",
        example="./model.pth.tar",
        format="official .pth.tar",
        images=True,
        packed_images=True,
        cpe_video_mode=True,
        video_clips="when it holds base_model.patch_generator.video_embedder (openradio writes it; the official "
        "loader ignores it with a warning)",
        swiglu="DINOv2 student; plain-ViT SwiGLU openradio-only",
    ),
    dict(
        route="Hugging Face, official layout",
        example="hf-hub:nvidia/RADIO-B",
        format="config.json with args + radio_model.* safetensors",
        images=True,
        packed_images=True,
        cpe_video_mode=True,
        video_clips="when the weights hold radio_model.model.patch_generator.video_embedder",
        swiglu="as the .pth.tar",
    ),
    dict(
        route="transformers native",
        example="./folder (model_type 'radio', RadioConfig)",
        format="transformers RadioModel folder (save_pretrained / openradio export --format transformers)",
        images=True,
        packed_images=True,
        cpe_video_mode=True,
        video_clips="yes: video_temporal_patch_size (Nemotron-3-Nano-Omni's encoder layout)",
        swiglu="yes: use_swiglu_ffn, layerscale_value",
    ),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument(
        "--routes",
        action="store_true",
        help="list the load routes (released name, .pth.tar, Hugging Face, transformers native) and "
        "what each carries (images, packed images, cpe_video_mode, video clips, SwiGLU)",
    )


def version_records() -> list[dict]:
    """One dict per released version: name, family, patch_size, preferred_resolution [h, w],
    max_resolution, vitdet, adaptors, cached, path (the cache file), url, note."""
    from openradio.formats.resolve import cached_checkpoint_path
    from openradio.versions import DEFAULT_VERSION, list_versions

    out = []
    for v in list_versions():
        path = cached_checkpoint_path(v)
        out.append(
            {
                "name": v.name,
                "family": v.family,
                "patch_size": v.patch_size,
                "preferred_resolution": list(v.preferred_resolution),
                "max_resolution": v.max_resolution,
                "vitdet": v.supports_vitdet,
                "adaptors": list(v.adaptors),
                "arch": v.arch,
                "arch_known": v.arch_known,
                "construction": v.construction,
                "parity_fixtures": v.parity_fixtures,
                "cached": path.is_file(),
                "path": str(path),
                "url": v.url.split("?")[0],
                "default": v.name == DEFAULT_VERSION,
                "note": v.note,
            }
        )
    return out


def format_table(records: list[dict]) -> str:
    header = ["name", "family", "backbone", "parity", "patch", "preferred", "ViTDet", "adaptors", "cached"]
    rows = [header]
    for r in records:
        h, w = r["preferred_resolution"]
        backbone = ("" if r["arch_known"] else "~") + r["arch"] + (" +attn" if "attn" in r["construction"] else "")
        parity = ",".join(f.split("/", 1)[1] for f in r["parity_fixtures"]) or "-"
        rows.append(
            [
                r["name"] + (" *" if r["default"] else ""),
                r["family"],
                backbone,
                parity,
                str(r["patch_size"]),
                f"{h}x{w}",
                "yes" if r["vitdet"] else "no",
                ",".join(r["adaptors"]) or "-",
                "yes" if r["cached"] else "no",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(c.ljust(wd) for c, wd in zip(row, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * wd for wd in widths))
    return "\n".join(lines)


def format_routes(routes: list[dict]) -> str:
    lines = []
    for r in routes:
        lines.append(f"{r['route']}: --version {r['example']}  ({r['format']})")
        lines.append(
            f"    images, packed images, cpe_video_mode: yes; video clips: {r['video_clips']}; "
            f"SwiGLU / layer scale: {r['swiglu']}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from openradio.formats.resolve import checkpoint_cache_dir

    if args.routes:
        print(json.dumps(ROUTES, indent=2) if args.json else format_routes(ROUTES))
        return 0
    records = version_records()
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    print(format_table(records))
    print(
        f"\n* default version (as the official torch.hub entry). ~ inferred backbone. Cache: {checkpoint_cache_dir()}"
    )
    notes = {r["note"] for r in records if r["note"]}
    for note in sorted(notes):
        print(f"note: {note}")
    video = next(r for r in ROUTES if r["route"] == "transformers native")
    print(
        f"video clips (temporally packed): the {video['route']} route, --version {video['example']} with "
        "video_temporal_patch_size; all routes: openradio versions --routes"
    )
    return 0
