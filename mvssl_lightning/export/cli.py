"""The ``mvssl-export`` command::

    mvssl-export runs/mveb_r50/version_0/checkpoints/last.ckpt --to torchvision --out mveb_r50.pth
    mvssl-export last.ckpt --to timm --out vits16.pth --num-classes 1000
    mvssl-export last.ckpt --to hf --out mveb_r50/ --eval-results runs/mveb_linear_r50/version_0/eval_results.json
    mvssl-export last.ckpt --to detectron2 --out mveb_r50.pkl

Errors (a missing or truncated checkpoint, a format the backbone cannot go to, an existing output) are one
line on standard error, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from mvssl_lightning.export import FORMATS, export_checkpoint

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvssl-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a pre-training checkpoint of any method, or an mvssl-eval checkpoint")
    parser.add_argument("--to", required=True, choices=FORMATS, help="the format")
    parser.add_argument("--out", required=True, help="the file to write (a folder for --to hf)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="torchvision / timm: add a classifier for this many classes (the trained one of an "
                             "evaluation checkpoint when it fits, else a fresh one)")
    parser.add_argument("--eval-results", default=None, help="hf: an eval_results.json for the model card")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="hf: upload the folder to this repo")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of ``mvssl-export``."""
    args = build_parser().parse_args(argv)
    try:
        path = export_checkpoint(args.checkpoint, args.to, args.out, num_classes=args.num_classes,
                                 eval_results=args.eval_results, overwrite=args.overwrite,
                                 push_to_hub=args.push_to_hub)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"mvssl-export: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {path} ({args.to})")


if __name__ == "__main__":
    main()
