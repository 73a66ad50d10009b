"""Squared-error loss of associative retrieval (paper Sec. 6.1).

l(y, v*) = 1/2 sum_j (v*_j - y_j)^2 with v* the one-hot target value, summed over the
S value dimensions and averaged over the batch (fairseq divides the summed loss by
``sample_size`` = number of queries). Also logs the retrieval accuracy (argmax y = target).
"""

import torch
import torch.nn.functional as F

from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass


def retrieval_loss(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-query loss 1/2 ||onehot(target) - y||^2, y [B, S] -> [B] (float32)."""
    onehot = F.one_hot(target, y.shape[-1]).to(torch.float32)
    return 0.5 * (onehot - y.float()).pow(2).sum(-1)


@register_criterion("retrieval_mse", dataclass=FairseqDataclass)
class RetrievalMSECriterion(FairseqCriterion):
    def forward(self, model, sample, reduce=True):
        y = model(**sample["net_input"])
        target = sample["target"]
        per_query = retrieval_loss(y, target)
        loss = per_query.sum() if reduce else per_query
        B = target.numel()
        correct = (y.argmax(-1) == target).sum()
        logging_output = {
            "loss": loss.data if reduce else per_query.sum().data,
            "correct": correct.data,
            "nsentences": B,
            "ntokens": sample.get("ntokens", B),
            "sample_size": B,
        }
        return loss, B, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        loss_sum = sum(float(log.get("loss", 0)) for log in logging_outputs)
        correct = sum(float(log.get("correct", 0)) for log in logging_outputs)
        n = sum(log.get("sample_size", 0) for log in logging_outputs)
        if n == 0:
            return
        metrics.log_scalar("loss", loss_sum / n, n, round=6)
        metrics.log_scalar("accuracy", 100.0 * correct / n, n, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
