"""Synthetic associative retrieval (paper Sec. 6.1; Figures 2, 3 and 5).

A sequence of L key/value pairs [(k, v)_1, ..., (k, v)_L] is written into the memory,
then queried with one key q that occurs in it; the target is the value that q was
paired with at its **last** occurrence. There are S keys and S values; each value is
a fixed one-hot vector in R^S (the model's output space). Encoding as in the authors'
``synthetic/`` code:

* setting 1 (capacity, Fig. 2): keys and values drawn **without** replacement, L = S;
* setting 2 (update rules, Fig. 3 and 5): drawn **with** replacement, L = 2S, so a key
  can be re-assigned to new values within one sequence;
* a training query is the key at a uniformly random position (keys that occur more
  often are queried more often), as in the authors' ``get_batch``;
* evaluation: ``--eval-sequences`` sequences (20), each with **every** key that occurs
  in it as a query (the paper's "20 sequences x all possible queries").

Differences from the authors' loop, on purpose: training sequences are a deterministic
function of (``--seed``, epoch, index) rather than a global RNG, and the evaluation set
is drawn once and fixed (the authors drew 20 fresh sequences at every evaluation), so
that evaluation losses of different models and steps are comparable. The authors'
evaluation sequences have length S even in setting 2 (their ``get_all_queries`` draws
``len(key_idxs)`` pairs) and at most 200 queries each; ours have length
``--eval-seq-len`` (default: ``--seq-len``) and all queries.

Stopping as in the paper (every 100 updates evaluate; stop when the evaluation loss is
<= 0.001 or after 10 evaluations without a new best): fairseq's ``--patience 10`` counts
validations; the loss threshold is the learning-rate scheduler ``stop_at_loss`` defined
below. One training "epoch" of this task is exactly ``--validate-interval-updates``
updates (100), so fairseq validates at the end of every epoch and hands that loss to
the scheduler's ``step``; at loss <= ``--stop-at-loss`` the scheduler sets the learning
rate to 0, and fairseq-train's own ``--stop-min-lr 0`` check ends training before the
next epoch. Recipe: ``recipes/synthetic/``.
"""

import csv
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional

import numpy as np
import torch
from omegaconf import II

from fairseq.data import FairseqDataset
from fairseq.dataclass import FairseqDataclass
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from fairseq.tasks import FairseqTask, register_task

# the task's criterion (retrieval_mse) registers with the task, so that --user-dir
# alone makes --criterion retrieval_mse available
from ..criterions import retrieval_mse  # noqa: F401

logger = logging.getLogger(__name__)

#: seed streams: training sequences, the "valid" set, the "test" set
_TRAIN_STREAM, _EVAL_STREAMS = 0, {"valid": 1, "test": 2}


# ----------------------------------------------------------------------------- data
def sample_sequences(rng: np.random.Generator, n: int, num_keys: int, seq_len: int, replace: bool):
    """``n`` sequences of ``seq_len`` (key, value) pairs over S = ``num_keys`` symbols each.

    Without replacement every key and every value occurs at most once per sequence
    (the authors' ``np.random.choice(..., replace=False)``). Returns int64 arrays
    ``keys``, ``values`` of shape [n, seq_len] with entries in [0, S).
    """
    if replace:
        keys = rng.integers(0, num_keys, size=(n, seq_len))
        values = rng.integers(0, num_keys, size=(n, seq_len))
    else:
        if seq_len > num_keys:
            raise ValueError(f"without replacement a sequence of {seq_len} pairs needs >= {seq_len} keys, got {num_keys}")
        base = np.broadcast_to(np.arange(num_keys), (n, num_keys))
        keys = rng.permuted(base, axis=1)[:, :seq_len]
        values = rng.permuted(base, axis=1)[:, :seq_len]
    return keys.astype(np.int64), values.astype(np.int64)


def last_occurrence(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of the last position of ``query[i]`` in ``keys[i]`` ([n, L], [n] -> [n]).

    Raises if a query does not occur in its sequence."""
    match = keys == query[:, None]
    if not match.any(1).all():
        raise ValueError("every query must occur in its sequence")
    L = keys.shape[1]
    return L - 1 - np.argmax(match[:, ::-1], axis=1)


def sample_queries(rng: np.random.Generator, keys: np.ndarray, values: np.ndarray):
    """One training query per sequence: the key at a uniformly random position; the
    target is the value at that key's last occurrence. Returns (query [n], target [n])."""
    n, L = keys.shape
    pos = rng.integers(0, L, size=n)
    query = keys[np.arange(n), pos]
    target = values[np.arange(n), last_occurrence(keys, query)]
    return query, target


def all_queries(keys: np.ndarray, values: np.ndarray):
    """Every distinct key of every sequence as a query (sorted within a sequence).

    Returns (seq_index [M], query [M], target [M]) with target = value at the last occurrence."""
    seq_index, query = [], []
    for i, row in enumerate(keys):
        uniq = np.unique(row)
        seq_index.append(np.full(len(uniq), i, dtype=np.int64))
        query.append(uniq.astype(np.int64))
    seq_index, query = np.concatenate(seq_index), np.concatenate(query)
    target = values[seq_index, last_occurrence(keys[seq_index], query)]
    return seq_index, query, target


class RetrievalDataset(FairseqDataset):
    """Items (sequence, query, target); sequences are shared by several items (evaluation)."""

    def __init__(self, keys, values, seq_index, query, target):
        super().__init__()
        self._set(keys, values, seq_index, query, target)

    def _set(self, keys, values, seq_index, query, target):
        self.keys, self.values = torch.from_numpy(keys), torch.from_numpy(values)
        self.seq_index = torch.from_numpy(seq_index)
        self.query, self.target = torch.from_numpy(query), torch.from_numpy(target)

    @property
    def seq_len(self) -> int:
        return self.keys.shape[1]

    def __len__(self):
        return len(self.query)

    def __getitem__(self, index):
        s = int(self.seq_index[index])
        return {"id": index, "keys": self.keys[s], "values": self.values[s],
                "query": self.query[index], "target": self.target[index]}

    def collater(self, samples):
        if len(samples) == 0:
            return {}
        B = len(samples)
        return {
            "id": torch.tensor([s["id"] for s in samples], dtype=torch.long),
            "nsentences": B,
            "ntokens": B * self.seq_len,
            "net_input": {
                "keys": torch.stack([s["keys"] for s in samples]),
                "values": torch.stack([s["values"] for s in samples]),
                "query": torch.stack([s["query"] for s in samples]),
            },
            "target": torch.stack([s["target"] for s in samples]),
        }

    def num_tokens(self, index):
        return self.seq_len

    def num_tokens_vec(self, indices):
        return np.full(len(indices), self.seq_len, dtype=np.int64)

    def size(self, index):
        return self.seq_len

    def ordered_indices(self):
        return np.arange(len(self), dtype=np.int64)


class OnTheFlyRetrievalDataset(RetrievalDataset):
    """Training set: ``size`` fresh sequences per epoch, one query each, a deterministic
    function of (seed, epoch), regenerated by :meth:`set_epoch`."""

    def __init__(self, size: int, num_keys: int, seq_len: int, replace: bool, seed: int):
        self.size_, self.num_keys, self.L, self.replace, self.seed = size, num_keys, seq_len, replace, seed
        self.epoch = None
        FairseqDataset.__init__(self)
        self.set_epoch(1)

    def set_epoch(self, epoch):
        if epoch == self.epoch:
            return
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, _TRAIN_STREAM, epoch])
        keys, values = sample_sequences(rng, self.size_, self.num_keys, self.L, self.replace)
        query, target = sample_queries(rng, keys, values)
        self._set(keys, values, np.arange(self.size_, dtype=np.int64), query, target)

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        # False: fairseq builds a new iterator (and new data-loader workers, which hold
        # their own copy of this dataset) every epoch, so --num-workers >= 1 sees the
        # new epoch's sequences too; a reused iterator's persistent workers would not
        return False


# ----------------------------------------------------------------------------- task
@dataclass
class AssociativeRetrievalConfig(FairseqDataclass):
    num_keys: int = field(
        default=20, metadata={"help": "S: number of distinct keys and of distinct values (d_value = S)"}
    )
    seq_len: Optional[int] = field(
        default=None,
        metadata={"help": "L: (key, value) pairs per sequence; default S, or 2S with --with-replacement"},
    )
    with_replacement: bool = field(
        default=False,
        metadata={"help": "draw keys and values with replacement (setting 2: keys get re-assigned; "
                  "the target is the value at the key's last occurrence)"},
    )
    d_key: int = field(default=64, metadata={"help": "d_key: size of the projected keys and queries"})
    eval_sequences: int = field(
        default=20, metadata={"help": "number of fixed evaluation sequences (each queried with every key it holds)"}
    )
    eval_seq_len: Optional[int] = field(
        default=None,
        metadata={"help": "length of the evaluation sequences; default --seq-len (the authors' code used S)"},
    )
    results_csv: Optional[str] = field(
        default=None,
        metadata={"help": "append one row per evaluation (updates, loss, accuracy, ...) to this CSV file"},
    )
    updates_per_epoch: Optional[int] = field(
        default=None,
        metadata={"help": "updates per training epoch (sequences are drawn per epoch); default "
                  "--validate-interval-updates, or 100. The stop_at_loss scheduler checks the loss at epoch ends"},
    )
    seed: int = II("common.seed")
    batch_size: Optional[int] = II("dataset.batch_size")
    validate_interval_updates: int = II("dataset.validate_interval_updates")
    update_freq: List[int] = II("optimization.update_freq")
    distributed_world_size: int = II("distributed_training.distributed_world_size")


def _resolved(value, default):
    """A config value, or ``default`` when unset or an unresolved interpolation (tests)."""
    if value is None or (isinstance(value, str) and value.startswith("${")):
        return default
    return value


@register_task("associative_retrieval", dataclass=AssociativeRetrievalConfig)
class AssociativeRetrievalTask(FairseqTask):
    """Associative retrieval of the value last paired with a query key (Sec. 6.1).

    Datasets: ``train`` (drawn on the fly every epoch), ``valid`` and ``test`` (fixed,
    disjoint seeds). Use with ``--arch fwp_retrieval --criterion retrieval_mse``.
    """

    def __init__(self, cfg: AssociativeRetrievalConfig):
        super().__init__(cfg)
        S = int(cfg.num_keys)
        if S < 2:
            raise ValueError(f"--num-keys must be >= 2, got {S}")
        replace = bool(cfg.with_replacement)
        L = int(cfg.seq_len) if cfg.seq_len is not None else (2 * S if replace else S)
        Le = int(cfg.eval_seq_len) if cfg.eval_seq_len is not None else L
        for flag, n in (("--seq-len", L), ("--eval-seq-len", Le)):
            if n < 1:
                raise ValueError(f"{flag} must be >= 1, got {n}")
            if not replace and n > S:
                raise ValueError(
                    f"{flag} {n} exceeds --num-keys {S}: without replacement a sequence holds each key at "
                    f"most once; use {flag} <= {S} or --with-replacement"
                )
        if int(cfg.d_key) < 1:
            raise ValueError(f"--d-key must be >= 1, got {cfg.d_key}")
        if int(cfg.eval_sequences) < 1:
            raise ValueError(f"--eval-sequences must be >= 1, got {cfg.eval_sequences}")
        if cfg.updates_per_epoch is not None and int(cfg.updates_per_epoch) < 1:
            raise ValueError(f"--updates-per-epoch must be >= 1, got {cfg.updates_per_epoch}")
        self.num_keys, self.seq_len, self.eval_seq_len, self.replace = S, L, Le, replace
        self.seed = int(_resolved(cfg.seed, 1))

    @classmethod
    def setup_task(cls, cfg: AssociativeRetrievalConfig, **kwargs):
        return cls(cfg)

    def train_epoch_size(self) -> int:
        """Training sequences per epoch: updates_per_epoch x batch size x update_freq x ranks."""
        batch = _resolved(self.cfg.batch_size, None)
        if batch is None:
            raise ValueError("--task associative_retrieval needs --batch-size (sequences per batch), not --max-tokens")
        updates = _resolved(self.cfg.updates_per_epoch, None)
        if updates is None:
            updates = _resolved(self.cfg.validate_interval_updates, 0) or 100
        freq = _resolved(self.cfg.update_freq, [1])
        world = _resolved(self.cfg.distributed_world_size, 1)
        return int(updates) * int(batch) * int(freq[0]) * max(1, int(world))

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        if split == "train":
            self.datasets[split] = OnTheFlyRetrievalDataset(
                self.train_epoch_size(), self.num_keys, self.seq_len, self.replace, self.seed
            )
        elif split in _EVAL_STREAMS:
            rng = np.random.default_rng([self.seed, _EVAL_STREAMS[split]])
            keys, values = sample_sequences(
                rng, int(self.cfg.eval_sequences), self.num_keys, self.eval_seq_len, self.replace
            )
            self.datasets[split] = RetrievalDataset(keys, values, *all_queries(keys, values))
        else:
            raise KeyError(f"associative_retrieval has the splits train, valid and test, not {split!r} "
                           "(check --valid-subset)")
        return self.datasets[split]

    def post_validate(self, model, stats, agg):
        """Append this evaluation to ``--results-csv`` (rank 0 only)."""
        path = self.cfg.results_csv
        if not path or (torch.distributed.is_available() and torch.distributed.is_initialized()
                        and torch.distributed.get_rank() != 0):
            return
        row = {
            "num_updates": stats.get("num_updates"),
            "loss": stats.get("loss"),
            "accuracy": stats.get("accuracy"),
            "num_keys": self.num_keys,
            "seq_len": self.seq_len,
            "with_replacement": int(self.replace),
        }
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def max_positions(self):
        return None

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None


# ------------------------------------------------------------------- stopping rule
@dataclass
class StopAtLossConfig(FairseqDataclass):
    stop_at_loss: float = field(
        default=0.001,
        metadata={"help": "stop training once the validation loss (--best-checkpoint-metric) at the end "
                  "of an epoch is <= this value (the paper's 0.001); needs --stop-min-lr 0"},
    )
    lr: List[float] = II("optimization.lr")
    stop_min_lr: float = II("optimization.stop_min_lr")
    maximize_best_checkpoint_metric: bool = II("checkpoint.maximize_best_checkpoint_metric")


@register_lr_scheduler("stop_at_loss", dataclass=StopAtLossConfig)
class StopAtLossSchedule(FairseqLRScheduler):
    """Constant learning rate until the validation loss reaches ``--stop-at-loss``.

    fairseq-train passes the end-of-epoch validation value of ``--best-checkpoint-metric``
    to :meth:`step`. Once it is <= ``--stop-at-loss``, the learning rate becomes 0 and
    fairseq-train stops at its next ``lr <= --stop-min-lr`` check (before the next epoch),
    so ``--stop-min-lr 0`` is required. With :class:`AssociativeRetrievalTask` an epoch is
    ``--validate-interval-updates`` updates, i.e. the check runs at every evaluation.
    """

    def __init__(self, cfg: StopAtLossConfig, optimizer):
        super().__init__(cfg, optimizer)
        if len(cfg.lr) != 1:
            raise ValueError(f"--lr-scheduler stop_at_loss takes a single --lr, got {list(cfg.lr)}")
        if float(cfg.stop_min_lr) < 0:
            raise ValueError(
                "--lr-scheduler stop_at_loss needs --stop-min-lr 0 (it stops training by setting the "
                f"learning rate to 0), got --stop-min-lr {cfg.stop_min_lr}"
            )
        if _resolved(cfg.maximize_best_checkpoint_metric, False):
            raise ValueError("--lr-scheduler stop_at_loss compares a loss: drop --maximize-best-checkpoint-metric")
        if not math.isfinite(float(cfg.stop_at_loss)):
            raise ValueError(f"--stop-at-loss must be a finite number, got {cfg.stop_at_loss}")
        self.lr = float(cfg.lr[0])
        self.stopped = False
        self.optimizer.set_lr(self.lr)

    def _apply(self) -> float:
        self.optimizer.set_lr(0.0 if self.stopped else self.lr)
        return self.optimizer.get_lr()

    def step(self, epoch, val_loss=None):
        super().step(epoch, val_loss)
        if val_loss is not None and float(val_loss) <= float(self.cfg.stop_at_loss) and not self.stopped:
            logger.info(f"validation loss {val_loss} <= --stop-at-loss {self.cfg.stop_at_loss}: stopping")
            self.stopped = True
        return self._apply()

    def step_begin_epoch(self, epoch):
        return self._apply()

    def step_update(self, num_updates):
        return self._apply()

    def state_dict(self):
        return {"best": self.best, "stopped": self.stopped}

    def load_state_dict(self, state_dict: Any):
        self.best = state_dict.get("best")
        self.stopped = bool(state_dict.get("stopped", False))
