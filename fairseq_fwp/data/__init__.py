"""Data of fairseq-fwp (as fairseq/data): the carried-state LM streams (``lm_streams``) and the
toy corpora of the demo, the recipes' smoke runs and the tests (``toy_data``)."""
