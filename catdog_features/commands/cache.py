"""``catdog-features cache ls|verify|prune|compact``: look after the feature store.

Standard library only at module level (``--help`` must not import TensorFlow).
"""

from __future__ import annotations

HELP = "list, verify, prune or compact the feature store"
DESCRIPTION = (
    "The feature store keeps one row per image content and extractor (backbone, weights, size, view, "
    "precision), in append-only HDF5 shards with checksums. `ls` lists the extractors; `verify` reads "
    "every committed chunk and exits 1 naming damaged shards (damaged rows are recomputed by the next "
    "extraction, never served); `prune --keep DIR ...` removes rows whose image content is in none of the "
    "folders (a dry run unless --yes); `compact` merges small shards. Prune and compact write the new shard "
    "before removing the old ones: a kill at any moment loses nothing."
)


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("ls", "per extractor: backbone, size, view, precision, rows, failures, shards, bytes"),
                       ("verify", "read every committed chunk; exit 1 when something is damaged"),
                       ("prune", "remove rows whose content is in none of the --keep folders"),
                       ("compact", "merge small shards")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--cache", default="features_cache", metavar="DIR", help="store folder (default: %(default)s)")
        if name == "prune":
            p.add_argument("--keep", nargs="+", required=True, metavar="DIR",
                           help="folders whose image contents are kept (searched recursively)")
            p.add_argument("--yes", action="store_true", help="really remove (default: only print what would go)")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def run(args) -> int:
    import os

    from catdog_features.features import housekeeping as hk

    if not os.path.isdir(args.cache):
        raise FileNotFoundError(f"Feature store not found. Received: --cache {args.cache!r}; expected a folder.")
    if args.action == "ls":
        rows = hk.list_store(args.cache)
        if not rows:
            print(f"{args.cache}: no extractors")
            return 0
        print(f"{'backbone':<22} {'size':>4} {'view':<6} {'precision':<9} {'rows':>8} {'failures':>8} {'shards':>6} "
              f"{'bytes':>10}  folder")
        for r in rows:
            live = f" (+{r.live_shards} being written)" if r.live_shards else ""
            print(f"{r.backbone:<22} {r.image_size:>4} {r.view:<6} {r.precision:<9} {r.rows:>8} {r.failures:>8} "
                  f"{r.shards:>6} {_size(r.bytes):>10}  {os.path.basename(r.folder)}{live}")
        return 0
    if args.action == "verify":
        result = hk.verify_store(args.cache)
        for note in result.notes:
            print(f"note: {note}")
        for d in result.damaged:
            print(f"DAMAGED {d.shard}: {d.rows}: {d.problem}")
        print(f"{result.shards} shard(s), {result.rows} committed rows checked: "
              + ("intact" if result.ok else f"{len(result.damaged)} problem(s); the next extraction recomputes "
                 "the damaged rows"))
        return 0 if result.ok else 1
    if args.action == "prune":
        results = hk.prune(args.cache, args.keep, dry_run=not args.yes)
    else:
        results = hk.compact(args.cache)
    verb = "would remove" if args.action == "prune" and not args.yes else "removed"
    for r in results:
        freed = r.bytes_before - r.bytes_after
        if args.action == "prune":
            print(f"{r.extractor}: {verb} {r.rows_before - r.rows_after} of {r.rows_before} rows, "
                  f"{_size(max(0, freed))} freed; shards {r.shards_before} -> {r.shards_after}")
        else:
            print(f"{r.extractor}: shards {r.shards_before} -> {r.shards_after}, {_size(r.bytes_before)} -> "
                  f"{_size(r.bytes_after)}")
    if args.action == "prune" and not args.yes:
        print("dry run: nothing was removed; add --yes to remove them")
    return 0
