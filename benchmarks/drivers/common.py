"""Command line shared by the per-SDK driver scripts (each runs in its own process)."""

from __future__ import annotations

import argparse


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="API root, e.g. http://127.0.0.1:1234/api")
    parser.add_argument("--types", required=True, help="comma-separated task types")
    parser.add_argument("--mode", choices=("sync", "async"), default="sync")
    parser.add_argument("--concurrency", type=int, default=10, help="tasks at once per type")
    parser.add_argument("--poll-interval", type=float, default=0.1, help="seconds")
    return parser.parse_args()
