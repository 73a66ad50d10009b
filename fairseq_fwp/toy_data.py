"""``python -m fairseq_fwp.toy_data`` (the documented command): runs :mod:`fairseq_fwp.data.toy_data`."""

from .data.toy_data import *  # noqa: F401,F403
from .data.toy_data import main

if __name__ == "__main__":
    main()
