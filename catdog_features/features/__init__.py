"""Stage 1: frozen backbones over images, once, into a crash-safe feature store.

* :mod:`.backbones`: the registry (:class:`BackboneSpec` per backbone) and weights specs;
* :mod:`.datasets`: find images and labels (Kaggle flat, folder-per-class, labels.csv);
* :mod:`.reader`: decode each file once (EXIF-aware), resize, failure records;
* :mod:`.mapper`: a backbone as a compiled function of fixed-shape batches;
* :mod:`.extract`: :func:`extract_features`, the reader -> mapper -> store pass;
* :mod:`.featureset`: :class:`FeatureSet`, row-aligned vectors of one image list.
"""
