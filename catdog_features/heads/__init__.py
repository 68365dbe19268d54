"""Stage 2 heads: scikit-learn classifiers trained on cached feature vectors.

* :class:`DenseHead` (:mod:`.dense`): ``Dropout [+ hidden] + Dense`` in Keras, the
  reference recipe's head, with SGDR, plateau and time-based decay schedules;
* :func:`lr_find` (:mod:`.lr_find`): the learning-rate range test.

TensorFlow is imported only when a head is fitted.
"""

from catdog_features.heads.dense import DenseHead
from catdog_features.heads.lr_find import LRFindResult, lr_find

__all__ = ["DenseHead", "LRFindResult", "lr_find"]
