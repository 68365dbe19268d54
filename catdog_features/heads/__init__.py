"""Stage 2 heads: scikit-learn classifiers trained on cached feature vectors.

* :class:`DenseHead` (:mod:`.dense`): ``Dropout [+ hidden] + Dense``, the reference recipe's
  head, with L2, standardisation, SGDR, plateau and time-based decay schedules; trained by
  :mod:`.trainer` (one traced TensorFlow step per architecture, reused across fits);
* :class:`LinearHead` (:mod:`.linear`): L2 logistic regression solved to optimum (L-BFGS),
  ``C`` chosen by cross-validation;
* :class:`TopBlockHead` (:mod:`.topblock`): a backbone's top block, fine-tuned with ``GAP +
  Dropout + Dense`` on feature maps cached at a split layer;
* :mod:`.saved`: the head kinds, :func:`build_head` from trial params, :func:`load_head`;
* :func:`lr_find` (:mod:`.lr_find`): the learning-rate range test.

TensorFlow is imported only when a DenseHead is fitted or saved.
"""

from catdog_features.heads.dense import DenseHead
from catdog_features.heads.linear import LinearHead
from catdog_features.heads.lr_find import LRFindResult, lr_find
from catdog_features.heads.topblock import TopBlockHead
from catdog_features.heads.saved import (
    HEAD_KEY, HEAD_KINDS, SavedHeadError, build_head, find_saved_head, load_head, save_head,
)

__all__ = [
    "DenseHead", "HEAD_KEY", "HEAD_KINDS", "LRFindResult", "LinearHead", "SavedHeadError", "build_head",
    "find_saved_head", "load_head", "lr_find", "save_head", "TopBlockHead",
]
