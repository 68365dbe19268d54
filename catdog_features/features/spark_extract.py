"""Extraction on Spark: the driver plans, each task extracts one partition into its own shard.

The driver lists and hashes the images, looks them up in the store and plans the distinct
missing contents (exactly as the local distributor does), then splits that work into
partitions (:func:`catdog_features.features.plan.partition`). A task receives paths, content
hashes and settings (never arrays or Keras objects), builds each model it needs once, and
writes its rows into a hidden shard per extractor; only when the shard is sealed does it get
its final name, derived from the partition's content (``part-<plan>-<k>.h5``), with an atomic
link that fails if another attempt (a retry or a speculative copy) published first. So a
partition's rows appear exactly once or not at all, and rows are bit-identical to the local
distributor's (each content is computed at its own slot of a batch of the same shape).
The store folder must be a path every executor can reach (shared storage).
"""

from __future__ import annotations

import hashlib
import json
from typing import Dict, List

from catdog_features.features.plan import Work, partition


def plan_id(work: Work, keys: Dict[str, str]) -> str:
    """A name for one partition's work: its contents, their needs and the extractor keys."""
    payload = json.dumps([list(work.hashes), [list(n) for n in work.needs], sorted(keys.items())])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def payloads(work: Work, extractors, batch_size: int, view: str, precision: str, jit_compile: bool,
             n_partitions: int, num_workers=None) -> List[dict]:
    """One JSON-able task payload per partition of ``work``."""
    settings = {name: {"backbone": ex.spec.name, "weights": ex.weights, "size": ex.size, "view": ex.view,
                       "model": ex.backbone, "config": ex.store.config, "store": str(ex.store.root.parent)}
                for name, ex in extractors.items()}
    out = []
    for k, part in enumerate(partition(work, n_partitions, batch_size)):
        names = sorted({n for need in part.needs for n in need})
        out.append({
            "part": k, "plan": plan_id(part, {n: extractors[n].store.key for n in names}),
            "hashes": list(part.hashes), "paths": list(part.paths), "needs": [list(n) for n in part.needs],
            "extractors": {n: settings[n] for n in names}, "batch_size": int(batch_size), "view": view,
            "precision": precision, "jit_compile": bool(jit_compile), "num_workers": num_workers,
        })
    return out


def extract_partition(payload: dict) -> dict:
    """A Spark task: extract one partition into its own shard per extractor (see the module notes)."""
    from catdog_features.distributed import task_attempt, use_task_gpus
    from catdog_features.features.backbones import get_backbone
    from catdog_features.features.compute import BackboneReport, Extractor, build_mapper, run_work
    from catdog_features.features.store import FeatureStore

    use_task_gpus()
    extractors = {}
    for name, s in payload["extractors"].items():
        spec = get_backbone(s["backbone"])
        extractors[name] = Extractor(name, spec, s["weights"], int(s["size"]),
                                     FeatureStore(s["store"]).extractor(s["config"]), view=s.get("view", payload["view"]),
                                     backbone=s.get("model", name))
    work = Work(tuple(payload["hashes"]), tuple(payload["paths"]), tuple(tuple(n) for n in payload["needs"]))
    batch = int(payload["batch_size"])
    mappers = {}
    for ex in extractors.values():  # one model per backbone, shared by its views
        if ex.backbone not in mappers:
            mappers[ex.backbone] = build_mapper(ex, batch, payload["precision"], payload["jit_compile"])
    reports = {name: BackboneReport(name, ex.size, ex.spec.dim, str(ex.store.root)) for name, ex in extractors.items()}
    transients: Dict[str, str] = {}
    final = f"part-{payload['plan']}-{payload['part']:05d}.h5"
    hidden = f".{final[:-3]}-attempt{task_attempt()}-{hashlib.sha256(repr(id(payload)).encode()).hexdigest()[:6]}.h5"
    written = run_work(work, extractors, mappers, batch, payload["num_workers"], reports, transients,
                       shard_name=lambda name: hidden)
    published = {name: extractors[name].store.publish(path, final) for name, path in written.items()}
    return {
        "part": payload["part"],
        "computed": {name: r.computed for name, r in reports.items()},
        "model_seconds": {name: r.model_seconds for name, r in reports.items()},
        "transients": transients,
        "published": published,
    }


def cleanup(extractors, plans) -> None:
    """Remove hidden shards that attempts of these partitions left behind (a killed task)."""
    from catdog_features.features.shard import is_live

    for ex in extractors.values():
        if not ex.store.shards_dir.is_dir():
            continue
        for path in ex.store.shards_dir.iterdir():
            name = path.name.lstrip(".")  # hidden shards, and their ballast files (".<shard>.ballast")
            if any(name.startswith(f"part-{plan}-") for plan in plans) and path.name.startswith("."):
                shard = path.with_name(path.name[1:-len(".ballast")]) if name.endswith(".ballast") else path
                if not is_live(shard):
                    path.unlink(missing_ok=True)
