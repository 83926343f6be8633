"""Command-line options every benchmark script shares."""
from __future__ import annotations

import argparse


def parser(doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (use 1 per process when training several at once; latency is "
                         "only comparable when measured alone with the default)")
    return ap


def parse(ap: argparse.ArgumentParser) -> argparse.Namespace:
    a = ap.parse_args()
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    return a
