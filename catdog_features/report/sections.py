"""The report's sections: each reads a :class:`~catdog_features.report.rundata.RunData` and
fills a :class:`~catdog_features.report.page.Section` (text, tables, figures, CSVs)."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from catdog_features.report import analysis as an
from catdog_features.report import figures as fg
from catdog_features.report.page import (
    COMPARISON_CSV, FAILURES_CSV, MISLABELED_CSV, TOP_LOSSES_CSV, Section, fmt, size,
)
from catdog_features.report.rundata import RunData, chosen_oof_probabilities

_STAGE_DETAILS = ("rows", "n_trials", "n_new", "best_loss", "method", "clip", "reason", "error", "format", "trials")


def summary(data: RunData, sec: Section) -> None:
    from catdog_features.ensemble import format_headline

    m = data.manifest
    if not m:
        sec.text("This run folder has no manifest.json; the sections below use the files found in it.")
    else:
        source = data.config.get("source") or f"`catdog-features {m.get('command', 'run')}` arguments"
        sec.text(f"Run folder {data.run.root} (config: {source}); created {m.get('created_at', 'n/a')}, "
                 f"updated {m.get('updated_at', 'n/a')}.")
    settings = data.extraction()
    if settings:
        sec.text(f"Features: {', '.join(settings.get('backbones', []))}; weights {settings.get('weights')}; "
                 f"image size {settings.get('image_size') or 'native'}; cache {settings.get('cache_dir')}.")
    if data.ensemble is not None:
        result = data.ensemble.result
        sec.text(f"Chosen ensemble of {len(result.members)} member(s): "
                 f"{format_headline(result.method, result.clip, result.chosen_score)}.")
    rows = []
    for name, st in data.stages.items():
        if name == "report":  # this report's own record is written after it
            continue
        detail = {k: v for k, v in st.items() if k in _STAGE_DETAILS}
        rows.append([name, st.get("status", "n/a"), fmt(st.get("seconds"), ".1f"),
                     ", ".join(f"{k}={fmt(v, '.5g') if isinstance(v, float) else v}" for k, v in detail.items())])
    if rows:
        sec.table(["stage", "status", "seconds", "details"], rows)
    for note in m.get("notes") or []:
        sec.text(f"Note: {note}")
    for problem in data.problems:
        sec.text(f"Problem: {problem}")
    versions = m.get("versions")
    if versions:
        sec.text("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))


def comparison(data: RunData, sec: Section) -> None:
    extract = data.stages.get("extract") or {}
    facts = an.backbone_facts(extract, data.backbones())
    saved = data.ensemble
    rows = an.comparison_rows(facts, data.trials or [], data.members(), saved.result.scores if saved else [],
                              saved.result.method if saved else None)
    if not rows:
        sec.text("No backbones, trials or ensemble found in this run.")
        return
    clip = saved.result.clip if saved else None
    sec.table(
        ["name", "kind", "feature dim", "best sweep val log loss", "OOF log loss",
         f"OOF log loss clipped at {clip:g}" if clip is not None else "OOF log loss, clipped", "OOF accuracy",
         "extraction images/s", "bytes on disk", "detail"],
        [[r["name"], r["kind"], fmt(r["dim"], "d"), fmt(r["sweep_val_log_loss"]), fmt(r["oof_log_loss"]),
          fmt(r["oof_log_loss_clipped"]), fmt(r["oof_accuracy"], ".2%"), fmt(r["images_per_s"], ".1f"),
          size(r["cache_bytes"]), r["detail"]] for r in rows],
    )
    sec.text("Sweep val log loss: the best trial's loss on the sweep's hold-out split (or CV folds) for that backbone "
             "combination. OOF log loss: of the out-of-fold predictions over every training image (members: their "
             "fold models'; the blend and the stacker: nested cross-validation, the score each ensembler was chosen "
             "by); the clipped column is the same predictions clipped at the chosen epsilon. Images/s: the model's "
             "throughput when the features were computed; bytes on disk: what the feature store reported. n/a: the "
             "run has no such number.")
    if extract.get("status") == "done" and extract.get("seconds"):
        n = sum(int((extract.get(part) or {}).get("n", 0)) + len((extract.get(part) or {}).get("failed", []))
                for part in ("train", "test"))
        sec.text(f"The extraction stage of this run read {n} images through all backbones in one pass in "
                 f"{extract['seconds']:.1f} s ({n / extract['seconds']:.1f} images/s including model builds and "
                 "file hashing).")
    elif extract.get("status") == "reused":
        sec.text("Every feature came from the cache in this run (no extraction time measured).")
    sec.csv(COMPARISON_CSV, rows, an.COMPARISON_COLUMNS, "the same table as CSV")


def curves(data: RunData, sec: Section, max_curves: int) -> None:
    members = data.members()
    if not members:
        sec.text("No ensemble members in this run (no ensemble.json / oof.h5), so no saved heads to show.")
        return
    members = sorted(members, key=lambda m: (m.get("sweep_loss") is None, m.get("sweep_loss") or 0.0))
    panels = []
    for m in members[:max_curves]:
        folds = data.fold_histories(m["name"])
        if folds:
            panels.append({"title": f"member {m['name']}: {'+'.join(m['backbones'])} "
                                    f"(sweep val loss {fmt(m.get('sweep_loss'), '.4g')})", "folds": folds})
    if not panels:
        sec.text(f"No saved fold heads found under {data.run.models}.")
        return
    sec.figure(fg.plot_head_curves(panels, max_curves), "head_curves",
               "training and validation log loss per epoch of each member's fold heads (best members first)")
    sec.text("Each fold head's validation loss is measured on the early-stopping split carved out of that fold's "
             "training part; the star marks the epoch whose weights were kept.")


def sweep(data: RunData, sec: Section) -> None:
    if data.trials is None:
        sec.text("This run has no sweep (no trials.sqlite).")
        return
    trials, meta = data.trials, data.trials_meta
    objective = meta.get("objective") or {}
    how = (f"{objective['cv']}-fold CV" if objective.get("cv") else
           f"hold-out split {objective.get('validation_split', 'n/a')}") if objective else "n/a"
    sec.text(f"{len(trials)} trial(s) of max_evals {meta.get('max_evals', 'n/a')}, "
             f"{sum(t['status'] != 'ok' for t in trials)} failed; objective: {objective.get('loss', 'log loss')} on a "
             f"{how} (seed {objective.get('random_state', 'n/a')}); trials file {data.trials_path}.")
    if not trials:
        return
    sec.figure(fg.plot_sweep_history(trials), "sweep_history",
               "validation log loss per trial, in the order run, with the best so far")
    shown = an.varying_params(trials)
    if shown or len({tuple(t["backbones"]) for t in trials if t["status"] == "ok"}) > 1:
        log_params = an.log_scaled_params(meta.get("space")) if meta.get("space") else None
        sec.figure(fg.plot_sweep_params(trials, shown, log_params), "sweep_params",
                   "validation log loss against each searched hyperparameter and the backbone subset")
    ok = sorted((t for t in trials if t["status"] == "ok"), key=lambda t: (t["loss"], t["tid"]))
    sec.table(["rank", "trial", "val log loss", "best epoch", "backbones", *shown, "seconds"],
              [[k + 1, t["tid"], fmt(t["loss"]), fmt(t["best_epoch"], "d"), "+".join(t["backbones"]),
                *[fmt(t["params"].get(p), ".4g") if isinstance(t["params"].get(p), float) else t["params"].get(p)
                  for p in shown], fmt(t["duration_s"], ".1f")] for k, t in enumerate(ok)],
              limit=10, more="every trial is in the trials file")
    failed = [t for t in trials if t["status"] != "ok"]
    if failed:
        sec.text("Failed trials:")
        sec.table(["trial", "backbones", "error"], [[t["tid"], "+".join(t["backbones"]), t.get("error") or ""]
                                                     for t in failed], limit=20)


def _training_paths(data: RunData, sec: Section, ids):
    """Image paths of the OOF rows, from the training folder (None: placeholders in the grid)."""
    source, labels_csv = data.train_source()
    if not source:
        sec.text("The run does not record where its training images are; the grid shows placeholders.")
        return None
    try:
        from catdog_features.features.datasets import load_dataset

        images = load_dataset(source, labels_csv=labels_csv or None)
    except Exception as exc:  # data moved or deleted: the tables still work, the grid shows placeholders
        sec.text(f"Training images not found ({type(exc).__name__}: {exc}); the grid shows placeholders.")
        return None
    where = {str(i): p for i, p in zip(images.ids, images.paths)}
    return [where.get(str(i)) for i in ids]


def errors(data: RunData, sec: Section, top_n: int, threshold: float) -> Dict[str, Any]:
    from catdog_features.ensemble import accuracy, log_loss
    from catdog_features.ensemble.metrics import constant_predictions_message

    if data.oof is None:
        sec.text("This run has no out-of-fold predictions (no oof.h5), so no error analysis.")
        return {}
    oof, seen = data.oof, len(data.problems)
    probs, name, stored = chosen_oof_probabilities(data)
    labels = np.asarray(oof.labels, dtype=np.int64)
    for problem in data.problems[seen:]:
        sec.text(f"Problem: {problem}")
    ll = log_loss(probs, labels)
    if stored is not None and abs(ll - stored) > 1e-6 * max(1.0, abs(stored)):
        sec.text(f"Warning: the OOF log loss of {name} in oof.h5 ({ll:.6f}) differs from ensemble.json's {stored:.6f}.")
    constant = constant_predictions_message(probs, f"out-of-fold predictions of {name}")
    if constant:
        sec.text(f"Warning: {constant}.")
    paths = _training_paths(data, sec, oof.ids)
    sec.text(f"Out-of-fold predictions of {name} for {len(labels)} training images: OOF log loss {ll:.5f}, "
             f"OOF accuracy {accuracy(probs, labels):.2%}. Each image is predicted by models that did not see it, so "
             "a high loss means its label disagrees with what the other images taught.")
    classes = list(oof.class_names)
    shown = min(top_n, len(labels))
    sec.figure(fg.plot_top_losses(oof.ids, paths, labels, probs, classes, top_n, title=f"top {shown} OOF losses of {name}"),
               "top_losses", f"the {shown} training images with the highest OOF loss")
    top = an.loss_rows(oof.ids, paths, labels, probs, classes, an.top_losses(probs, labels, top_n))
    sec.csv(TOP_LOSSES_CSV, top, an.MISLABELED_COLUMNS + ("p_true",), f"the top {len(top)} losses with paths")
    suspects = an.likely_mislabeled(oof.ids, paths, labels, probs, classes, threshold)
    sec.text(f"{len(suspects)} image(s) where the OOF prediction disagrees with the label with confidence "
             f">= {threshold:g} (likely mislabeled, or showing both classes):")
    if suspects:
        sec.table(list(an.MISLABELED_COLUMNS),
                  [[r["id"], r["path"], r["label"], r["predicted"], f"{r['confidence']:.4f}", f"{r['loss']:.3f}"]
                   for r in suspects], limit=30, more=f"all in {MISLABELED_CSV}")
    sec.csv(MISLABELED_CSV, suspects, an.MISLABELED_COLUMNS, "ids to inspect or exclude (id,path,label,predicted,confidence,loss)")
    return {"probs": probs, "name": name, "labels": labels, "classes": classes}


def confusion(sec: Section, chosen: Dict[str, Any]) -> None:
    if not chosen:
        sec.text("No out-of-fold predictions, so no confusion matrix.")
        return
    classes = chosen["classes"]
    cm = an.confusion_matrix(chosen["probs"], chosen["labels"], len(classes))
    acc = np.trace(cm) / max(1, cm.sum())
    sec.figure(fg.plot_confusion_matrix(cm, classes, f"OOF confusion matrix of {chosen['name']} "
                                                     f"(n={cm.sum()}, accuracy {acc:.2%})"),
               "confusion_matrix", "out-of-fold confusion matrix of the chosen ensemble")
    if len(classes) > 2:
        pairs = an.worst_confused_pairs(cm, classes, 15)
        if pairs:
            sec.text("Worst-confused class pairs (true class predicted as another):")
            sec.table(["true", "predicted as", "images", "share of the true class"],
                      [[p["true"], p["predicted"], p["count"], f"{p['share']:.1%}"] for p in pairs])
        else:
            sec.text("No confusions: every OOF prediction is right.")


def failures(data: RunData, sec: Section) -> None:
    extract = data.stages.get("extract") or {}
    rows = [{"set": part, "path": str(path), "reason": str(reason)}
            for part in ("train", "test") for path, reason in (extract.get(part) or {}).get("failed") or []]
    if not extract and data.ensemble is not None:
        rows += [{"set": "test", "path": str(t[1]), "reason": str(t[2])} for t in data.ensemble.test_failed]
        sec.text("(No extraction record in the manifest; test-set failures from ensemble.json only.)")
    elif not extract:
        sec.text("No extraction record in this run.")
        return
    path = sec.csv(FAILURES_CSV, rows, ("set", "path", "reason"), None)
    if not rows:
        sec.text("Every image was read: no failure records.")
        return
    by_reason: Dict[str, int] = {}
    for r in rows:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    sec.text(f"{len(rows)} image(s) could not be used and were left out of the features "
             "(test images still get a submission row, with the training class prior): "
             + "; ".join(f"{reason}: {n}" for reason, n in sorted(by_reason.items(), key=lambda kv: -kv[1])) + ".")
    sec.table(["set", "file", "reason"], [[r["set"], r["path"], r["reason"]] for r in rows],
              more=f"all in {FAILURES_CSV}")
    sec.link(path, "every failure record")
