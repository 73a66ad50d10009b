"""fairseq's ``--store-ema`` with fast weight models.

fairseq's trainer-level EMA (``fairseq/models/ema/ema.py``) averages every tensor of
the model's state dict, ``ema = decay * ema + (1 - decay) * live``. That crashes on
FAVOR+'s integer ``seed``/``draws`` buffers ("result type Float can't be cast to the
desired output type Long") and would average independent random-feature draws, which
is no valid draw. fairseq's EMA has a ``skip_keys`` set for keys it copies from the
live model instead, but builds it empty; :func:`patch_fairseq_ema` extends it, at every
EMA step, with the keys of every feature map's buffers in the live model
(``feature_maps.unaveraged_state_keys``).

So the EMA model's FAVOR+ features, seed and draw counter are the live model's after
the update the EMA step follows, i.e. the features the last training forward used: the
EMA model and the live model evaluate with the same random features and differ only in
their (averaged) weights. This is the rule checkpoint averaging follows too
(``scripts/average_checkpoints.py`` copies the features from its last input).
Models without feature-map buffers (linear, dpfp, softmax, and every stock fairseq
model) are averaged exactly as before.

A second fairseq EMA bug is fixed on the way: its step leaves the encoder's and
decoder's ``version`` buffers out of the state dict it loads back into the EMA model,
so fairseq's upgrade logic takes the EMA model for a pre-2019 checkpoint and deletes its
final ``layer_norm`` (pre-LN models such as ``fwp_lm``: the EMA model silently loses
``decoder.layer_norm`` after its first step). :func:`patch_fairseq_ema` passes the EMA
model's own ``version`` buffers through.
"""

from ..modules.feature_maps import unaveraged_state_keys


def patch_fairseq_ema() -> None:
    """Make fairseq's EMA copy (not average) feature-map buffers; idempotent."""
    try:
        from fairseq.models.ema.ema import EMA
    except ImportError:  # a fairseq without trainer-level EMA: nothing to patch
        return
    if getattr(EMA, "_fwp_copies_feature_buffers", False):
        return
    average_step, restore = EMA._step_internal, EMA.restore

    def _step_internal(self, new_model, updates=None):
        keys = unaveraged_state_keys(new_model)
        if keys:
            self.skip_keys = set(self.skip_keys) | set(keys)
        return average_step(self, new_model, updates)

    _step_internal.__doc__ = (average_step.__doc__ or "") + (
        " (fairseq-fwp: feature-map buffers, e.g. FAVOR+'s features, are copied from the live model.)"
    )

    def restore_keeping_versions(self, state_dict, build_fp32_params=False):
        missing = {k: v for k, v in self.model.state_dict().items() if "version" in k and k not in state_dict}
        if missing:
            state_dict = {**state_dict, **missing}
        return restore(self, state_dict, build_fp32_params=build_fp32_params)

    restore_keeping_versions.__doc__ = restore.__doc__
    EMA._step_internal = _step_internal
    EMA.restore = restore_keeping_versions
    EMA._fwp_copies_feature_buffers = True
