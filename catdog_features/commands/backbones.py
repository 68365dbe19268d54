"""`catdog-features backbones`: the backbones one can name, with sizes, dims and weights files."""

from __future__ import annotations

HELP = "list the backbones (keras.applications names, hub: presets) with sizes and dims"
DESCRIPTION = (
    "List every backbone name --backbones accepts: the keras.applications registry (native input "
    "size, smallest size, pooled dim, preprocessing, the ImageNet weights file Keras looks for in "
    "~/.keras/models/), and with --hub the keras-hub presets (hub:PRESET; needs the [hub] extra to "
    "build). Own model files are named keras:/path/to/model.keras?preprocess=caffe|tf|torch|none. "
    "Does not import TensorFlow."
)


def add_arguments(parser) -> None:
    parser.add_argument("--hub", action="store_true", help="also list the keras-hub presets (hub:PRESET)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables (for the README)")


def _table(header, rows, markdown: bool) -> str:
    rows = [[str(c) for c in r] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in [header] + rows)


def run(args) -> int:
    from catdog_features.features.backbones import backbone_table
    from catdog_features.features.hub import FAMILIES, HUB_PRESETS

    apps = backbone_table()
    print(_table(["name", "size", "min", "dim", "preprocess", "ImageNet weights file"],
                 [[r["name"], r["size"], r["min_size"], r["dim"], r["preprocess"], r["weights_file"]] for r in apps],
                 args.markdown))
    if args.hub:
        print()
        rows = []
        for p in HUB_PRESETS.values():
            family = FAMILIES[p.family]
            rows.append([f"hub:{p.preset}", p.input_size, family.patch_size or p.input_size,
                         p.hidden_dim * family.dim_factor, family.pooling, p.handle])
        print(_table(["name", "size", "min", "dim", "pooling", "preset (pinned version)"], rows, args.markdown))
    return 0
