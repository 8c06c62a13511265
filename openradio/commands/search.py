"""`openradio search`: nearest rows of an `openradio extract` folder to a text or an image."""

from __future__ import annotations

import argparse
from pathlib import Path

from openradio.commands.common import CLIError

HELP = "search an `openradio extract` folder by text (clip/siglip adaptor) or by image: exact cosine top-k"
EXAMPLES = """\
  openradio search feats/ --text "a photo of a cat"            # the clip (or siglip) adaptor's summaries
  openradio search feats/ --image query.jpg --k 20 --json        # backbone summaries
  openradio search feats/ --image query.jpg --column clip_summary --faiss

The model and preprocessing are the folder's own (its manifest); --version overrides the model's
location (its weights must be the same)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="DIR", help="an `openradio extract` output folder (local or fsspec URL)")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="text query, through the adaptor's text tower")
    q.add_argument("--image", help="image query (a file)")
    p.add_argument(
        "--column",
        default=None,
        help="column to search (default: <clip|siglip>_summary for --text, summary for --image)",
    )
    p.add_argument("--k", type=int, default=10, help="results to show (default 10)")
    p.add_argument("--version", default=None, help="where the folder's model is, if not where the manifest says")
    p.add_argument("--text-weights", default=None, metavar="FILE", help="local open_clip weights for the text tower")
    p.add_argument("--text-model", default=None, metavar="NAME|JSON", help="open_clip text tower to use instead")
    p.add_argument("--faiss", action="store_true", help="search with a faiss flat index (needs openradio[faiss])")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print the hits as JSON")


def run(args: argparse.Namespace) -> int:
    from openradio.extract.search import embed_image, embed_text, hits_json, load_folder_model, search
    from openradio.model.text import attach_text_tower

    if args.k < 1:
        raise CLIError(f"--k must be at least 1, got {args.k}")
    if args.image and not Path(args.image).is_file():
        raise CLIError(f"query image not found: {args.image}")
    model, mapper = load_folder_model(args.folder, args.version, args.device)
    if args.text is not None:
        adaptor = next((a for a in ("clip", "siglip") if a in mapper.adaptors), None)
        if args.column:
            adaptor = args.column.removesuffix("_summary")
        if adaptor not in mapper.adaptors:
            raise CLIError(
                f"--text needs a clip or siglip adaptor summary in {args.folder} (extract with --adaptor clip)"
            )
        if args.text_weights or args.text_model:
            conf = dict(getattr(model.adaptors[adaptor], "teacher_conf", {}) or {})
            if args.text_model:
                conf["model"] = args.text_model
            attach_text_tower(model.adaptors[adaptor], conf, weights=args.text_weights, lazy=True)
        column = f"{adaptor}_summary"
        query = embed_text(model, args.text, adaptor)
    else:
        column = args.column or "summary"
        query = embed_image(mapper, args.image, column)
    hits = search(args.folder, query, column=column, k=args.k, use_faiss=args.faiss)
    if args.json:
        print(hits_json(hits))
    else:
        print(f"{'rank':>4}  {'score':>7}  key  (source)   [{column}]")
        for h in hits:
            print(f"{h.rank:>4}  {h.score:7.4f}  {h.key}  ({h.source})")
    return 0
