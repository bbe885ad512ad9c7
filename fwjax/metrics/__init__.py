"""Evaluation metrics: classification (average precision, the paper's confusion matrix, PR curves)
and retrieval (precision@k, inverse recall, AUIRC, CMC).

``from fwjax import metrics`` gives all of them; :mod:`fwjax.metrics.classification` and
:mod:`fwjax.metrics.retrieval` hold the implementations and their definitions.
"""

from fwjax.metrics.classification import (  # noqa: F401
    average_precision,
    average_precision_from_histograms,
    average_precision_histograms,
    binned_error_bound,
    macro_average,
    multilabel_confusion,
    precision_recall_curve,
)
from fwjax.metrics.retrieval import (  # noqa: F401
    auirc,
    ceil_share,
    cmc,
    cmc_curve,
    cmc_from_first_ranks,
    first_relevant_rank,
    inverse_recall_at_q,
    precision_at_k,
    relevance_from_order,
    relevant_positions,
    retrieval_scores,
)
