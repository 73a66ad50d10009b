"""Recipe logic shared by the shell entry points in ``recipes/*/`` (see ``recipes/launch.py``).

``common`` holds what every recipe needs (GPU-count arithmetic, downloads that resume,
step markers, running fairseq, results tables); each recipe module holds its model table
and the paper's hyperparameters.
"""
