"""Language modelling with the fast weight state carried across segments (paper Table 4).

``--task fwp_language_modeling`` is fairseq's ``language_modeling`` plus two options:

* ``--fwp-carry-state`` (training, Table 4 "without truncating context"): the training
  split becomes ``--batch-size`` x world-size parallel token streams kept in order
  (Transformer-XL's layout, :meth:`LMStreamDataset.segments`); batch ``i`` holds segment
  ``i`` of every stream of the rank, and the fast weight state (S, z) of every causal
  fast weight layer is carried, detached, from one segment to the next. The state is reset
  at the start of every epoch (and of every validation pass; validation carries its own
  state over ``--batch-size-valid`` streams). Without the flag the task *is*
  ``language_modeling`` (independent segments, Tables 2, 3, 5).
* ``--fwp-eval-mode {sliding,full}`` (fairseq-eval-lm, batch-size-1 semantics):
  ``sliding`` scores every token with the window of the ``--tokens-per-sample`` L tokens
  ending at it (the first window scores all its positions, every later window only its
  last token; windows are independent and batched by ``--max-tokens`` / ``--batch-size``);
  ``full`` carries the state through the whole split from its first token, one segment of
  L tokens after the other (batch 1).

Where the state lives: during training in the task (``self._carried["train"|"valid"]``,
a dict bound to the model's layers with :meth:`FwpTransformerDecoder.carry_state` around
each ``train_step`` / ``valid_step``); during ``full`` evaluation in a dict bound to every
model the task built, for as long as fairseq-eval-lm iterates over the batches.
Resuming from a checkpoint mid-epoch resets the state (fairseq 0.12's trainer does not
hand the task its saved state back): the resumed segment of every stream starts from a
zero fast weight, like the first segment of an epoch.
"""


import logging
import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from omegaconf import OmegaConf

from fairseq import utils
from fairseq.data import TruncatedDictionary, data_utils, iterators
from fairseq.dataclass import ChoiceEnum
from fairseq.modules import LearnedPositionalEmbedding
from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask
from fairseq.utils import safe_getattr

from ..compat.cli_errors import FwpConfigError, fairseq_command
from ..data.lm_streams import LMStreamDataset, flatten_indexed_dataset, score_last_positions
from ..models.encoder_decoder import detach_fast_weight_state

logger = logging.getLogger(__name__)

EVAL_MODES = ("sliding", "full")


@dataclass
class FwpLanguageModelingConfig(LanguageModelingConfig):
    fwp_carry_state: bool = field(
        default=False,
        metadata={
            "help": "carry the fast weight state (detached) from one training segment to the "
            "next (paper Table 4): --batch-size B parallel streams kept in order, batch i = "
            "segment i of every stream; reset every epoch. Needs --batch-size, "
            "--sample-break-mode none and fast weight layers"
        },
    )
    fwp_eval_mode: Optional[ChoiceEnum(EVAL_MODES)] = field(
        default=None,
        metadata={
            "help": "fairseq-eval-lm: sliding = every token scored with the window of the "
            "--tokens-per-sample tokens ending at it (independent windows, batched); full = "
            "the fast weight state carried through the whole split, segment by segment"
        },
    )


def _decoder(model):
    m = model
    while not hasattr(m, "decoder") and hasattr(m, "module"):  # DDP / proxy wrappers
        m = m.module
    return m.decoder


def _has_fast_weights(model) -> bool:
    dec = _decoder(model)
    return hasattr(dec, "fast_weight_modules") and len(dec.fast_weight_modules()) > 0


def _has_learned_positions(model) -> bool:
    return isinstance(getattr(_decoder(model), "embed_positions", None), LearnedPositionalEmbedding)


@register_task("fwp_language_modeling", dataclass=FwpLanguageModelingConfig)
class FwpLanguageModelingTask(LanguageModelingTask):
    """fairseq's ``language_modeling`` with a carried fast weight state (see the module doc)."""

    def __init__(self, args, dictionary, output_dictionary=None, targets=None):
        super().__init__(args, dictionary, output_dictionary, targets)
        self._check_args()
        self._carried: Dict[str, dict] = {"train": {}, "valid": {}}
        self._models: List[torch.nn.Module] = []
        self._announced: set = set()  # splits whose carried-state scoring was logged

    # --------------------------------------------------------------- checks
    @property
    def carry_state(self) -> bool:
        return bool(safe_getattr(self.args, "fwp_carry_state", False))

    @property
    def eval_mode(self) -> Optional[str]:
        mode = safe_getattr(self.args, "fwp_eval_mode", None)
        return None if mode is None else str(mode)

    def _refuse_carry_state_outside_training(self, command: Optional[str]):
        """--fwp-carry-state shapes training and validation batches; other commands would ignore it."""
        if command == "eval_lm":
            raise FwpConfigError(
                "--fwp-carry-state is a training option; fairseq-eval-lm evaluates with --fwp-eval-mode "
                "full (the state carried through the split) or --fwp-eval-mode sliding"
            )
        if command in ("generate", "interactive"):
            raise FwpConfigError(
                f"--fwp-carry-state is a training option (fairseq-train, fairseq-validate); fairseq-{command} "
                "carries the fast weight state from token to token anyway (incremental decoding); drop it"
            )

    def _check_args(self):
        flags = [f for f, on in (("--fwp-carry-state", self.carry_state),
                                 (f"--fwp-eval-mode {self.eval_mode}", self.eval_mode is not None)) if on]
        if not flags:
            return
        if self.carry_state:
            self._refuse_carry_state_outside_training(fairseq_command())
        which = " and ".join(flags)
        mode = str(safe_getattr(self.args, "sample_break_mode", "none") or "none")
        if mode != "none":
            raise FwpConfigError(
                f"{which} treats each split as one token stream and needs --sample-break-mode none "
                f"(got --sample-break-mode {mode})"
            )
        if safe_getattr(self.args, "add_bos_token", False):
            raise FwpConfigError(f"{which} does not support --add-bos-token (the stream starts with </s>)")
        if str(safe_getattr(self.args, "shorten_method", "none") or "none") != "none":
            raise FwpConfigError(f"{which} does not support --shorten-method (the stream is never cut)")
        if self.targets != ["future"]:
            raise FwpConfigError(f"{which} predicts the next token only; drop --self-target/--past-target")
        if self.carry_state and safe_getattr(self.args, "batch_size", None) is None:
            raise FwpConfigError(
                "--fwp-carry-state needs a fixed --batch-size B (the number of parallel streams "
                "per rank); --max-tokens alone forms batches whose size changes between batches, "
                "so no state could be carried from one to the next"
            )

    def _check_model(self, model, cfg):
        carry, full = self.carry_state, self.eval_mode == "full"
        if not (carry or full):
            return
        which = "--fwp-carry-state" if carry else "--fwp-eval-mode full"
        if not _has_fast_weights(model):
            fm = safe_getattr(cfg, "fwp_feature_map", None)
            hint = (
                "--fwp-feature-map softmax has no fast weight state"
                if str(fm) == "softmax"
                else "this model has no causal fast weight layer (an fwp_lm with --fwp-replace decoder_self is needed)"
            )
            maps = (
                "linear or dpfp (not favor, whose features are redrawn every training forward)"
                if carry
                else "linear, favor or dpfp"
            )
            raise FwpConfigError(
                f"{which} carries the fast weight state of the model's layers, but {hint}; use "
                f"--fwp-feature-map {maps} (evaluate softmax models with --fwp-eval-mode sliding)"
            )
        if carry and str(safe_getattr(cfg, "fwp_feature_map", "")) == "favor":
            raise FwpConfigError(
                "--fwp-carry-state with --fwp-feature-map favor: FAVOR+ redraws its random features "
                "at every training forward, so a state written with one draw would be read with "
                "the next; use linear or dpfp for carried-state training"
            )

    # ----------------------------------------------------------- building
    def build_model(self, args, from_checkpoint=False):
        model = super().build_model(args, from_checkpoint)
        self._check_model(model, args)
        self._models.append(model)  # fairseq-eval-lm's SequenceScorer calls these models
        return model

    def load_dataset(self, split: str, epoch=1, combine=False, **kwargs):
        """``language_modeling``'s dataset, or with --fwp-carry-state / --fwp-eval-mode the
        split as one stream in segments of --tokens-per-sample (re-laid out per batching)."""
        if not (self.carry_state or self.eval_mode):
            return super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        paths = utils.split_paths(self.args.data)
        split_path = os.path.join(paths[(epoch - 1) % len(paths)], split)
        if os.path.isfile(split_path + ".bin") and os.path.getsize(split_path + ".bin") == 0:
            self._refuse_empty_split(split, split_path + ".bin")  # fairseq's mmap loader fails on it
        data = data_utils.load_indexed_dataset(split_path, self.dictionary, self.args.dataset_impl, combine=combine)
        if data is None:
            raise FileNotFoundError(f"Dataset not found: {split} ({split_path})")
        stream = flatten_indexed_dataset(data, self.dictionary.eos())
        if len(stream) < 2:
            self._refuse_empty_split(split, split_path)
        self.datasets[split] = LMStreamDataset.segments(
            stream, self.args.tokens_per_sample, self.dictionary.pad(), **self._vocab_kw()
        )
        logger.info(f"{split}: one stream of {len(stream) - 1:,} tokens")

    @staticmethod
    def _refuse_empty_split(split: str, path: str):
        raise FwpConfigError(
            f"the {split} split has no tokens ({path}); there is nothing to score or train on: "
            "choose a split with tokens (--gen-subset, --valid-subset, --train-subset) or binarise it again"
        )

    def _vocab_kw(self):
        if isinstance(self.output_dictionary, TruncatedDictionary):
            return {"out_vocab": len(self.output_dictionary), "unk": self.output_dictionary.unk()}
        return {}

    def _check_length(self, max_positions):
        L = self.args.tokens_per_sample
        limit = max_positions if isinstance(max_positions, int) else None
        if limit is not None and L > limit:
            why = (
                f"its learned positional embeddings (--decoder-learned-pos) cover {limit} positions (the "
                "--tokens-per-sample it was trained with; models trained with --no-token-positional-embeddings "
                "or sinusoidal positions, the default, have no length limit)"
                if any(_has_learned_positions(m) for m in self._models)
                else f"the model reads at most {limit} positions"
            )
            raise FwpConfigError(
                f"--tokens-per-sample {L} is longer than the model can read: {why}; use --tokens-per-sample {limit} or less"
            )

    def _split_name(self, dataset) -> str:
        return next((name for name, d in self.datasets.items() if d is dataset), "given")

    def _train_subset(self) -> str:
        """--train-subset (fairseq's dataset option, outside the task's config: read from the
        config the task's node belongs to)."""
        if OmegaConf.is_config(self.args):
            return OmegaConf.select(self.args._get_root(), "dataset.train_subset", default=None) or "train"
        return safe_getattr(self.args, "train_subset", None) or "train"

    def _training_split(self, split: str) -> bool:
        """Whether ``split`` is trained on here (fairseq-validate only validates, any split)."""
        return split == self._train_subset() and fairseq_command() != "validate"

    def _batch_flags(self, split: str):
        """The flags that size the batches of ``split`` in this command: (batch size, max tokens)."""
        if self._training_split(split) or fairseq_command() == "validate":
            return "--batch-size", "--max-tokens"
        return "--batch-size-valid (default: --batch-size)", "--max-tokens-valid (default: --max-tokens)"

    # ------------------------------------------------------------ training
    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, max_positions=None,
                           ignore_invalid_inputs=False, required_batch_size_multiple=1, seed=1,
                           num_shards=1, shard_id=0, num_workers=0, epoch=1, data_buffer_size=0,
                           disable_iterator_cache=False, skip_remainder_batch=False,
                           grouped_shuffling=False, update_epoch_batch_itr=False):
        """With --fwp-carry-state: ``max_sentences`` streams per rank (rank ``shard_id`` of
        ``num_shards`` takes streams ``shard_id * B ... shard_id * B + B - 1``), batches in
        stream order, never shuffled. Otherwise fairseq's batching."""
        if self.eval_mode is not None:
            raise FwpConfigError(
                f"--fwp-eval-mode {self.eval_mode} is an option of fairseq-eval-lm (how it scores a split); "
                f"{'fairseq-' + fairseq_command() if fairseq_command() else 'fairseq batch iteration'} "
                "does not use it; drop it"
            )
        if not (self.carry_state and isinstance(dataset, LMStreamDataset)):
            return super().get_batch_iterator(
                dataset, max_tokens=max_tokens, max_sentences=max_sentences, max_positions=max_positions,
                ignore_invalid_inputs=ignore_invalid_inputs, required_batch_size_multiple=required_batch_size_multiple,
                seed=seed, num_shards=num_shards, shard_id=shard_id, num_workers=num_workers, epoch=epoch,
                data_buffer_size=data_buffer_size, disable_iterator_cache=disable_iterator_cache,
                skip_remainder_batch=skip_remainder_batch, grouped_shuffling=grouped_shuffling,
                update_epoch_batch_itr=update_epoch_batch_itr,
            )
        B, L = max_sentences, self.args.tokens_per_sample
        split = self._split_name(dataset)
        batch_flag, tokens_flag = self._batch_flags(split)
        if B is None:
            raise FwpConfigError(
                f"--fwp-carry-state needs a fixed {batch_flag} for the {split} split: B streams per rank, "
                "batch i = segment i of every stream"
            )
        if max_tokens is not None and max_tokens < B * L:
            raise FwpConfigError(
                f"{tokens_flag} {max_tokens} would split the {split} batches of {batch_flag} {B} streams x "
                f"--tokens-per-sample {L} tokens (the batch size would change between batches); "
                f"drop it or set it >= {B * L}"
            )
        n_streams = B * num_shards
        if dataset.n_targets < n_streams:
            fix = (f"use {batch_flag} {dataset.n_targets // num_shards} or less" if dataset.n_targets >= num_shards
                   else "use fewer ranks")
            raise FwpConfigError(
                f"the {split} split has {dataset.n_targets} tokens, too few for {n_streams} streams "
                f"({batch_flag} {B} x {num_shards} ranks); {fix}"
            )
        if not self._training_split(split) and split not in self._announced:
            self._announced.add(split)
            logger.info(
                f"--fwp-carry-state: {split} is scored as {n_streams} streams ({batch_flag} {B} x {num_shards} "
                "ranks), the fast weight state carried from each segment to the next and reset at the start, "
                "so its loss depends on the number of streams; fairseq-eval-lm --fwp-eval-mode full scores "
                "one stream carried through the whole split"
            )
        self._check_length(max_positions)
        streams = LMStreamDataset.segments(
            dataset.stream, L, self.dictionary.pad(), n_streams=B * num_shards,
            rows=range(shard_id * B, (shard_id + 1) * B), **self._vocab_kw(),
        )
        return iterators.EpochBatchIterator(
            dataset=streams, collate_fn=streams.collater, batch_sampler=streams.batches(), seed=seed,
            num_workers=num_workers, epoch=epoch, buffer_size=data_buffer_size, disable_shuffling=True,
        )

    def _state_for(self, kind: str, sample) -> dict:
        state = self._carried[kind]
        segment = sample.get("fwp_segment", None)
        if segment == 0:
            state.clear()  # first segment of the streams (epoch / validation start)
        elif not state and segment is not None:
            logger.info(
                f"--fwp-carry-state: {kind} starts at segment {segment} of its streams (resumed "
                "mid-epoch): the carried fast weight state starts from zero"
            )
        bsz = sample["net_input"]["src_tokens"].size(0)
        for buf in state.values():
            S = buf.get("S")
            if S is not None and S.size(0) != bsz:
                raise FwpConfigError(
                    f"--fwp-carry-state: a {kind} batch of {bsz} streams follows one of {S.size(0)}; the "
                    "carried state needs the same batch size (number of streams) in every batch"
                )
        return state

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if not self.carry_state:
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
        state = self._state_for("train", sample)
        with _decoder(model).carry_state(state):
            out = super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
        detach_fast_weight_state(state)  # truncated backpropagation: the span is one segment
        return out

    def valid_step(self, sample, model, criterion):
        if not self.carry_state:
            return super().valid_step(sample, model, criterion)
        state = self._state_for("valid", sample)
        with _decoder(model).carry_state(state):
            out = super().valid_step(sample, model, criterion)
        detach_fast_weight_state(state)
        return out

    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        self._carried["train"].clear()

    def begin_valid_epoch(self, epoch, model):
        super().begin_valid_epoch(epoch, model)
        self._carried["valid"].clear()

    # ---------------------------------------------------------- evaluation
    def eval_lm_dataloader(self, dataset, max_tokens: Optional[int] = 36000, batch_size: Optional[int] = None,
                           max_positions: Optional[int] = None, num_shards: int = 1, shard_id: int = 0,
                           num_workers: int = 1, data_buffer_size: int = 10, context_window: int = 0):
        """--fwp-eval-mode sliding / full batches (see the module docstring); without it,
        fairseq's (including --context-window)."""
        mode = self.eval_mode
        if mode is None:
            if self.carry_state:
                self._refuse_carry_state_outside_training("eval_lm")
            return super().eval_lm_dataloader(
                dataset, max_tokens=max_tokens, batch_size=batch_size, max_positions=max_positions,
                num_shards=num_shards, shard_id=shard_id, num_workers=num_workers,
                data_buffer_size=data_buffer_size, context_window=context_window,
            )
        if context_window > 0:
            raise FwpConfigError(
                f"--fwp-eval-mode {mode} sets the context itself (windows of --tokens-per-sample "
                "tokens, or the whole split); drop --context-window"
            )
        if not self._models:
            raise FwpConfigError(f"--fwp-eval-mode {mode}: the task built no model to evaluate")
        self._check_length(max_positions)
        L = self.args.tokens_per_sample
        if mode == "full":
            if num_shards > 1:
                raise FwpConfigError(
                    "--fwp-eval-mode full evaluates one stream; it cannot be sharded over ranks "
                    "(run fairseq-eval-lm with --distributed-world-size 1)"
                )
            for m in self._models:
                self._check_model(m, None)
            if batch_size not in (None, 1):
                logger.info(f"--fwp-eval-mode full evaluates one stream: batch size 1 (not {batch_size})")
            data = dataset
            batches = [[i] for i in range(len(data))]
            num_shards, shard_id = 1, 0
        else:
            if max_tokens is not None and max_tokens < L:
                raise FwpConfigError(
                    f"--fwp-eval-mode sliding batches windows of up to --tokens-per-sample {L} tokens by "
                    f"--max-tokens, counted in window input tokens (not in scored tokens as with "
                    f"--context-window): --max-tokens {max_tokens} holds no window; set --max-tokens {L} or more"
                )
            data = LMStreamDataset.windows(dataset.stream, L, self.dictionary.pad(), **self._vocab_kw())
            batches = data.batch_by_size(data.ordered_indices(), max_tokens=max_tokens, max_sentences=batch_size)
        itr = iterators.EpochBatchIterator(
            dataset=data, collate_fn=data.collater, batch_sampler=batches, num_shards=num_shards,
            shard_id=shard_id, num_workers=num_workers, buffer_size=data_buffer_size, disable_shuffling=True,
        ).next_epoch_itr(shuffle=False)
        logger.info(f"--fwp-eval-mode {mode}: {data.n_targets:,} tokens, L = {L}, {len(itr)} batches")
        return iterators.CountingIterator(self._bound(itr, mode), start=0, total=len(itr))

    def _bound(self, itr, mode: str):
        """Yield the batches while every built model carries one state (``full``) or scores
        only the windows' last positions (``sliding``)."""
        with ExitStack() as stack:
            for model in self._models:
                dec = _decoder(model)
                if mode == "full":
                    stack.enter_context(dec.carry_state({}))
                else:
                    stack.enter_context(score_last_positions(dec))
            yield from itr
